"""Source trees for tests: write files below a root, and a workspace full of secrets to mask."""

from __future__ import annotations

from pathlib import Path


def write(root: Path, files: dict[str, str]) -> Path:
    """Write ``files`` (relative path → text) below ``root``, creating directories; returns ``root``."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


SECRETS = {
    "openai": "sk-proj-Abc123Def456Ghi789Jkl012Mno345",
    "aws_id": "AKIAIOSFODNN7EXAMPLE",
    "aws_secret": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "password": "correct-horse-battery",
    "bearer": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "db": "s3cr3t-db-pw",
    "env_token": "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
    "key_line": "MIIEowIBAAKCAQEA7bq0yLw8e1a2",
    "entropy": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b",
}


def secret_workspace(root: Path) -> Path:
    """A small service below ``root`` whose code and config hold every value of ``SECRETS``."""
    s = SECRETS
    return write(
        root,
        {
            "svc/client.py": (
                "import os\nfrom .config import settings\n\n"
                f'OPENAI_KEY = "{s["openai"]}"\n'
                f"aws_access_key_id = {s['aws_id']}\n"
                f'AWS_SECRET_ACCESS_KEY = "{s["aws_secret"]}"\n'
                f'headers = {{"Authorization": "Bearer {s["bearer"]}"}}\n'
                f'hmac_key = "{s["entropy"]}"\n'
                "def connect(password: str) -> None:\n"
                f'    url = "postgresql://app:{s["db"]}@db:5432/app"\n'
                "    return url\n"
            ),
            "svc/config.py": f'settings = {{"password": "{s["password"]}", "debug": True}}\n',
            "svc/.env": f"GITHUB_TOKEN={s['env_token']}\n",
            "svc/deploy.yaml": f"db:\n  password: {s['password']}\n",
            "svc/key.pem": f"-----BEGIN RSA PRIVATE KEY-----\n{s['key_line']}\n-----END RSA PRIVATE KEY-----\n",
            "svc/notes.txt": f"-----BEGIN RSA PRIVATE KEY-----\n{s['key_line']}\n-----END RSA PRIVATE KEY-----\n",
        },
    )
