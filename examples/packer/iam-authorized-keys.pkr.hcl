# Packer provisioners for an Amazon Linux / Debian / Ubuntu AMI build: copy the release tarball made by
# `./install.sh --package iam-authorized-keys.tar.gz` and install it. Put these inside your `build` block.
# Nothing secret or user-specific ends up in the image: the host reads keys from IAM at login.
# install.sh keeps the AMI's default account (cloud-init's default_user) on its launch key pair, and
# chains another AuthorizedKeysCommand in effect (EC2 Instance Connect on Ubuntu/Amazon Linux AMIs), so
# its logins keep working: put --replace-other-command into iak_flags to replace it instead.
#
# On Debian/Ubuntu AMIs the Debian package does the same through apt (./install.sh --package
# iam-authorized-keys_VERSION_amd64.deb; settings in the conffile /etc/iam-authorized-keys/config):
# a file provisioner copies the .deb to /tmp/iak.deb, and the shell provisioner's inline steps become
# `apt-get install -y /tmp/iak.deb` and `rm -f /tmp/iak.deb`.

variable "iak_tarball" {
  type    = string
  default = "iam-authorized-keys.tar.gz"
}

variable "iak_flags" {
  type    = string
  default = "--allowed-group ssh-users"
}

build {
  sources = ["source.amazon-ebs.base"]

  provisioner "file" {
    source      = var.iak_tarball
    destination = "/tmp/iak.tar.gz"
  }

  provisioner "shell" {
    environment_vars = ["IAK_FLAGS=${var.iak_flags}"]
    execute_command  = "sudo -E bash -euo pipefail '{{ .Path }}'"
    inline = [
      "tar -C /tmp -xzf /tmp/iak.tar.gz",
      "/tmp/iam-authorized-keys/install.sh --binary /tmp/iam-authorized-keys/iam-authorized-keys --no-reload $IAK_FLAGS",
      "rm -rf /tmp/iak.tar.gz /tmp/iam-authorized-keys",
    ]
  }
}
