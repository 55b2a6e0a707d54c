"""mountctl explains itself: --version, help text for every option, shell completion."""

import argparse
import os
import subprocess
import sys

from fsdriver import __version__
from mountctl.cli import build_parser


def _parsers(parser, path=("mountctl",)):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, path + (name,))


def test_every_option_has_help():
    missing = [f"{' '.join(path)} {'/'.join(a.option_strings)}"
               for path, parser in _parsers(build_parser())
               for a in parser._actions
               if a.option_strings and not isinstance(a, argparse._HelpAction) and not a.help]
    assert missing == []


def test_mount_help_lists_the_owner_and_mode_options():
    p = subprocess.run([sys.executable, "-m", "mountctl", "mount", "--help"], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    text = " ".join(p.stdout.split())  # as wrapped for any terminal width
    for option, metavar, what, default in [
            ("--uid", "UID", "owner shown for objects", "the namespace owner"),
            ("--gid", "GID", "group shown for objects", "the namespace's group"),
            ("--file-mode", "MODE", "mode (octal: 644, 0644 or 0o644) shown for files",
             "the namespace's: 0600, 0660 or 0666"),
            ("--dir-mode", "MODE", "mode (octal: 755, 0755 or 0o755) shown for directories",
             "the namespace's: 0700, 0770 or 0777")]:
        assert (f"{option} {metavar} {what} that carry no attributes of their own (written by other tools) "
                f"(default: {default})") in text, option


def test_every_mode_spelling_the_help_shows_is_accepted():
    """User trial: `--file-mode 0o644` was accepted though the help said only "octal": the help
    now lists each spelling, and each one it lists reads as the same mode."""
    import re

    from fsdriver.mountconfig import MountConfig

    text = " ".join(subprocess.run([sys.executable, "-m", "mountctl", "mount", "--help"], capture_output=True,
                                   text=True, timeout=60, check=True).stdout.split())
    for option, name in (("--file-mode", "file_mode"), ("--dir-mode", "dir_mode")):
        shown = re.search(re.escape(option) + r" MODE mode \(octal: ([0-7]+), (0[0-7]+) or (0o[0-7]+)\)", text)
        assert shown, option
        assert {getattr(MountConfig.load({name: s}), name) for s in shown.groups()} == {int(shown[1], 8)}


def test_version():
    p = subprocess.run([sys.executable, "-m", "mountctl", "--version"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == f"mountctl (stashfs) {__version__}"


def test_shell_completion(tmp_path):
    out = tmp_path / "completions"
    line = "mountctl mou"
    env = dict(os.environ, _ARGCOMPLETE="1", COMP_LINE=line, COMP_POINT=str(len(line)), _ARGCOMPLETE_IFS="\n",
               _ARGCOMPLETE_STDOUT_FILENAME=str(out))
    p = subprocess.run([sys.executable, "-m", "mountctl"], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert out.read_text().split() == ["mount"]
