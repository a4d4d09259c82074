"""Print the README's configuration table from the settings in code (so the two never drift apart)."""

from app.settings import setting_docs


def main() -> None:
    """Write the markdown table to stdout."""
    print("| variable | default | meaning |")
    print("|---|---|---|")
    for doc in setting_docs():
        default = f"`{doc.default}`" if doc.default else "(empty)"
        print(f"| `{doc.env}` | {default} | {doc.help.replace('|', '/')} |")


if __name__ == "__main__":
    main()
