"""Sets up IAM state in the emulator for the shell test tiers (boto3 ships with moto).

usage: iam_admin.py ENDPOINT create-user NAME
       iam_admin.py ENDPOINT upload NAME PUBKEY_FILE        (prints the key id)
       iam_admin.py ENDPOINT status NAME KEY_ID Active|Inactive
       iam_admin.py ENDPOINT delete-key NAME KEY_ID
       iam_admin.py ENDPOINT create-group GROUP
       iam_admin.py ENDPOINT add-to-group GROUP NAME
       iam_admin.py ENDPOINT remove-from-group GROUP NAME
"""
import sys

import boto3


def main(argv):
    endpoint, cmd, *args = argv
    iam = boto3.client(
        "iam",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    if cmd == "create-user":
        iam.create_user(UserName=args[0])
    elif cmd == "upload":
        with open(args[1]) as f:
            body = f.read()
        out = iam.upload_ssh_public_key(UserName=args[0], SSHPublicKeyBody=body)
        print(out["SSHPublicKey"]["SSHPublicKeyId"])
    elif cmd == "create-group":
        iam.create_group(GroupName=args[0])
    elif cmd == "add-to-group":
        iam.add_user_to_group(GroupName=args[0], UserName=args[1])
    elif cmd == "remove-from-group":
        iam.remove_user_from_group(GroupName=args[0], UserName=args[1])
    elif cmd == "status":
        iam.update_ssh_public_key(UserName=args[0], SSHPublicKeyId=args[1], Status=args[2])
    elif cmd == "delete-key":
        iam.delete_ssh_public_key(UserName=args[0], SSHPublicKeyId=args[1])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv[1:])
