"""The bundle's one program. Started as dcp-chat (a link to it, or dcp-chat.exe) it is the command
line; under any other name it is the desktop app. One program keeps one copy of the Python archive."""

import sys
from pathlib import Path


def main() -> int:
    name = Path(sys.argv[0]).name.lower()
    if name.startswith("dcp-chat"):
        from dcp_desktop.cli import main as command
    else:
        from dcp_desktop.gui.app import main as command
    return command()


if __name__ == "__main__":
    sys.exit(main())
