# Packer provisioners for a Debian / Ubuntu / Amazon Linux / RHEL AMI build: copy the package made by
# `./install.sh --package-all dist/` (the .deb for Debian and Ubuntu, the .rpm for Amazon Linux and RHEL)
# and install it with the image's package manager. Put these inside your `build` block.
# The package's postinst (%post) runs its install.sh: locked system user, cache directory, sshd drop-in
# checked with sshd -T. It keeps the AMI's default account (cloud-init's default_user) on its launch key
# pair, and chains another AuthorizedKeysCommand in effect (EC2 Instance Connect on Ubuntu/Amazon Linux
# AMIs), so its logins keep working. Settings go into /etc/iam-authorized-keys/config (read at every
# lookup; upgrades keep it). Nothing secret or user-specific ends up in the image: hosts read keys from
# IAM at login. Images without a package manager: the release tarball (--package FILE.tar.gz) and its
# install.sh (see README, Image pipelines).

variable "iak_package" {
  type    = string
  default = "dist/iam-authorized-keys_0.1.0_amd64.deb"   # or dist/iam-authorized-keys-0.1.0-1.x86_64.rpm
}

variable "iak_settings" {
  type    = string
  default = "allowed-group = ssh-users"
}

build {
  sources = ["source.amazon-ebs.base"]

  provisioner "file" {
    source      = var.iak_package
    destination = "/tmp/${basename(var.iak_package)}"
  }

  provisioner "shell" {
    environment_vars = ["IAK_PACKAGE=/tmp/${basename(var.iak_package)}", "IAK_SETTINGS=${var.iak_settings}"]
    execute_command  = "sudo -E bash -euo pipefail '{{ .Path }}'"
    inline = [
      "case $IAK_PACKAGE in *.deb) DEBIAN_FRONTEND=noninteractive apt-get install -y -q \"$IAK_PACKAGE\" ;; *.rpm) \"$(command -v dnf || command -v yum)\" install -y \"$IAK_PACKAGE\" ;; *) exit 1 ;; esac",
      "test -s /etc/ssh/sshd_config.d/10-iam-authorized-keys.conf || { echo 'iam-authorized-keys: the package setup failed (see above; rpm and dnf exit 0 when %post fails): sshd is not configured' >&2; exit 1; }",
      "printf '%s\\n' \"$IAK_SETTINGS\" >> /etc/iam-authorized-keys/config",
      "/usr/bin/iam-authorized-keys map --config /etc/iam-authorized-keys/config root >/dev/null",
      "rm -f \"$IAK_PACKAGE\"",
    ]
  }
}
