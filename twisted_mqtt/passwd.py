"""Mosquitto password files, and ``python -m twisted_mqtt.passwd``, which manages them as
``mosquitto_passwd`` does.

A password file has one ``user:password`` line per user; the password is stored as Mosquitto
writes it (``$7$<iterations>$<salt>$<hash>``, PBKDF2-HMAC-SHA512, or Mosquitto 1.x's
``$6$<salt>$<hash>``, salted SHA-512), in any other format ``twisted_mqtt.auth.passwords``
reads (bcrypt, Django's PBKDF2), or in plain text.  Lines starting with ``#``, blank lines and
lines without ``:`` are skipped, and blanks around the user name and the password are ignored,
as Mosquitto does.  ``twistd mqtt --auth file:PATH`` reads such files.

::

    python -m twisted_mqtt.passwd [-H sha512-pbkdf2|sha512] [-I ITERATIONS] [-c] FILE USER
    python -m twisted_mqtt.passwd [-H ...] [-I ...] [-c] -b FILE USER PASSWORD
    python -m twisted_mqtt.passwd -D FILE USER
    python -m twisted_mqtt.passwd -U FILE

``-c`` creates (or overwrites) the file; without it the user's line is added or replaced and
the other lines are kept as they are.  The password is asked twice on the terminal, or taken
from the command line with ``-b``.  ``-D`` deletes a user; ``-U`` hashes the plain-text
passwords of a file (unlike ``mosquitto_passwd -U``, lines already hashed are left alone, so
running it twice does no harm).  New hashes are ``$7$`` with Mosquitto 2's defaults (101
iterations, a 12-byte salt) unless ``-H sha512`` (``$6$``) or ``-I`` says otherwise.  The file
is replaced in one step (written beside it, then renamed), keeping its permissions; a new file
is readable by its owner only.  Errors are one line on standard error and exit status 1.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from twisted_mqtt.auth.passwords import hash_password, is_hashed

DEFAULT_ITERATIONS = 101
"""Mosquitto 2's PBKDF2-SHA512 iterations (``mosquitto_passwd``'s ``PW_DEFAULT_ITERATIONS``)."""
MAX_LENGTH = 65535
"""Longest user name and password ``mosquitto_passwd`` accepts."""
HASHES = {"sha512-pbkdf2": "mosquitto", "sha512": "mosquitto_sha512"}
"""``-H`` values and the ``hash_password`` scheme each writes."""


HELP = """Manage a Mosquitto password file (read by twistd mqtt --auth file:FILE).
 -b : take the password from the command line instead of asking it twice
 -c : create the file (overwriting an existing one)
 -D : delete the user
 -H : sha512-pbkdf2 ($7$, the default) or sha512 ($6$, Mosquitto 1.x)
 -I : PBKDF2 iterations (default 101, as mosquitto_passwd)
 -U : hash the plain-text passwords of the file (hashed lines are kept)"""


class PasswordFileError(Exception):
    """A password file or a request that cannot be used; the message is one line."""


def parse_line(line: str) -> Optional[Tuple[str, str]]:
    """(user, stored password) of one line, or None for a line that holds none (comment,
    blank, no ``:``, empty user name).  The password ends at the next ``:``, as Mosquitto
    and Twisted's ``FilePasswordDB`` read it."""
    if line.startswith("#") or ":" not in line:
        return None
    fields = line.rstrip("\r\n").split(":")
    user, password = fields[0].strip(), fields[1].strip()
    if not user:
        return None
    return user, password


def parse_password_file(text: str) -> Tuple[Dict[str, str], List[int]]:
    """The users of a password file (user name to stored password; the first line of a user
    wins) and the numbers of the lines that look like entries but are not (no ``:``, no user
    name)."""
    users: Dict[str, str] = {}
    bad: List[int] = []
    for number, line in enumerate(text.splitlines(), 1):
        entry = parse_line(line)
        if entry is None:
            if line.strip() and not line.startswith("#"):
                bad.append(number)
            continue
        users.setdefault(*entry)
    return users, bad


def read_password_file(path: Union[str, Path]) -> Tuple[Dict[str, str], List[int]]:
    """``parse_password_file`` of a file; ``PasswordFileError`` naming it if it cannot be
    read."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise PasswordFileError(f"{path}: cannot read: {error.strerror or error}") from None
    return parse_password_file(data.decode("utf-8", "replace"))


def check_user_name(user: str) -> None:
    """``PasswordFileError`` for a user name a password file cannot hold."""
    if not user:
        raise PasswordFileError("the user name is empty")
    if len(user.encode("utf-8", "surrogateescape")) > MAX_LENGTH:
        raise PasswordFileError(f"the user name must be at most {MAX_LENGTH} bytes long")
    if any(ord(character) < 32 or ord(character) == 127 for character in user):
        raise PasswordFileError("the user name must not contain control characters")
    if ":" in user:
        raise PasswordFileError("the user name must not contain ':'")
    if user != user.strip():
        raise PasswordFileError("the user name must not start or end with blanks")


def entry(user: str, password: str, hash_name: str = "sha512-pbkdf2",
          iterations: int = DEFAULT_ITERATIONS) -> str:
    """The line (with its newline) storing ``password`` for ``user``, hashed as
    ``mosquitto_passwd -H hash_name -I iterations`` would."""
    if not password:
        raise PasswordFileError("the password is empty")
    if len(password.encode("utf-8", "surrogateescape")) > MAX_LENGTH:
        raise PasswordFileError(f"the password must be at most {MAX_LENGTH} bytes long")
    scheme = HASHES[hash_name]
    stored = hash_password(password.encode("utf-8", "surrogateescape"), scheme,
                           rounds=iterations if scheme == "mosquitto" else None)
    return f"{user}:{stored}\n"


def _read_lines(path: Path) -> List[str]:
    try:
        return path.read_text(encoding="utf-8", errors="surrogateescape").splitlines(True)
    except OSError as error:
        raise PasswordFileError(f"cannot open {path}: {error.strerror or error}") from None


def write_lines(path: Path, lines: Sequence[str]) -> None:
    """Replace ``path`` by ``lines`` in one step (a file beside it, renamed over it), keeping
    the mode of an existing file; a new one gets 0600."""
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o600
    except OSError as error:
        raise PasswordFileError(f"cannot open {path}: {error.strerror or error}") from None
    target = path.resolve() if path.is_symlink() else path
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    except OSError as error:
        raise PasswordFileError(f"cannot write beside {target}: "
                                f"{error.strerror or error}") from None
    try:
        with os.fdopen(handle, "w", encoding="utf-8", errors="surrogateescape") as file:
            file.writelines(line if line.endswith("\n") else line + "\n" for line in lines)
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except OSError as error:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise PasswordFileError(f"cannot write {target}: {error.strerror or error}") from None


def set_password(lines: Sequence[str], user: str, new_entry: str) -> List[str]:
    """``lines`` with ``user``'s line replaced by ``new_entry`` (added at the end if the user
    has none; later lines of the same user dropped)."""
    result: List[str] = []
    placed = False
    for line in lines:
        parsed = parse_line(line)
        if parsed is not None and parsed[0] == user:
            if not placed:
                result.append(new_entry)
                placed = True
            continue
        result.append(line)
    if not placed:
        if result and not result[-1].endswith("\n"):
            result[-1] += "\n"
        result.append(new_entry)
    return result


def delete_user(lines: Sequence[str], user: str) -> List[str]:
    """``lines`` without ``user``'s; ``PasswordFileError`` if it has none."""
    kept = [line for line in lines if (parse_line(line) or ("",))[0] != user]
    if len(kept) == len(lines):
        raise PasswordFileError(f"user {user} not found in the password file")
    return kept


def hash_plain_lines(lines: Sequence[str], hash_name: str = "sha512-pbkdf2",
                     iterations: int = DEFAULT_ITERATIONS) -> Tuple[List[str], int]:
    """``lines`` with every plain-text password hashed (hashed ones, comments and other lines
    unchanged), and how many were hashed."""
    result: List[str] = []
    count = 0
    for line in lines:
        parsed = parse_line(line)
        if parsed is None or is_hashed(parsed[1]):
            result.append(line)
            continue
        if not parsed[1]:
            raise PasswordFileError(f"user {parsed[0]} has an empty password")
        result.append(entry(parsed[0], parsed[1], hash_name, iterations))
        count += 1
    return result, count


class _Parser:
    """The command line (flags before the file, as ``mosquitto_passwd`` reads them)."""

    USAGE = ("usage: python -m twisted_mqtt.passwd [-H sha512-pbkdf2|sha512] [-I ITERATIONS] "
             "[-c | -D] [-b] FILE USER [PASSWORD] | -U FILE")

    def __init__(self, argv: Sequence[str]) -> None:
        self.hash_name = "sha512-pbkdf2"
        self.iterations = DEFAULT_ITERATIONS
        self.create = self.delete = self.batch = self.update = False
        index = 0
        while index < len(argv) and argv[index].startswith("-") and argv[index] != "-":
            flag = argv[index]
            if flag in ("-h", "--help"):
                raise SystemExit(self._help())
            if flag in ("-H", "-I"):
                if index + 1 >= len(argv):
                    raise PasswordFileError(f"{flag} needs a value")
                value = argv[index + 1]
                if flag == "-H":
                    if value not in HASHES:
                        raise PasswordFileError(f"unknown hash {value!r}; use sha512-pbkdf2 "
                                                f"or sha512")
                    self.hash_name = value
                else:
                    if not value.isdigit() or int(value) < 1:
                        raise PasswordFileError(f"-I needs a number of iterations > 0, "
                                                f"not {value!r}")
                    self.iterations = int(value)
                index += 2
                continue
            names = {"-c": "create", "-D": "delete", "-b": "batch", "-U": "update"}
            if flag not in names:
                raise PasswordFileError(f"unknown option {flag} ({self.USAGE})")
            setattr(self, names[flag], True)
            index += 1
        self.arguments = list(argv[index:])
        chosen = [flag for flag, on in (("-c", self.create), ("-D", self.delete),
                                        ("-U", self.update)) if on]
        if len(chosen) > 1:
            raise PasswordFileError(f"{' and '.join(chosen)} cannot be used together")
        if self.batch and (self.delete or self.update):
            raise PasswordFileError(f"-b and {'-D' if self.delete else '-U'} cannot be used "
                                    f"together")
        wanted = 1 if self.update else 3 if self.batch else 2
        if len(self.arguments) != wanted:
            raise PasswordFileError(f"expected {wanted} argument{'s' * (wanted > 1)} "
                                    f"({self.USAGE})")

    def _help(self) -> int:
        print(self.USAGE)
        print(HELP)
        return 0


def read_new_password(prompt: Callable[[str], str]) -> str:
    """A password asked twice through ``prompt`` (``getpass.getpass``); ``PasswordFileError``
    when the two differ."""
    first = prompt("Password: ")
    if first != prompt("Reenter password: "):
        raise PasswordFileError("passwords do not match")
    return first


def run(argv: Sequence[str], prompt: Optional[Callable[[str], str]] = None) -> int:
    """Do what the command line says; ``PasswordFileError`` when it cannot be done."""
    import getpass

    options = _Parser(argv)
    path = Path(options.arguments[0])
    if options.update:
        lines, count = hash_plain_lines(_read_lines(path), options.hash_name, options.iterations)
        write_lines(path, lines)
        print(f"{path}: {count} password{'s' * (count != 1)} hashed")
        return 0
    user = options.arguments[1]
    check_user_name(user)
    if options.delete:
        write_lines(path, delete_user(_read_lines(path), user))
        return 0
    lines = [] if options.create else _read_lines(path)
    if options.batch:
        password = options.arguments[2]
    else:
        password = read_new_password(prompt or getpass.getpass)
    new_entry = entry(user, password, options.hash_name, options.iterations)
    write_lines(path, set_password(lines, user, new_entry))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m twisted_mqtt.passwd``: the exit status (errors: one line, status 1)."""
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except PasswordFileError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, EOFError):
        print("", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
