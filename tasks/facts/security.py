"""Security facts: listening ports, failed units, sshd's effective settings, the inbound
firewall and the logs' counts, each command beside its model and parser.

The security audit reads them all; the maintenance plan reads the ports and the units.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field

from core.errors import FactParseError
from tasks.facts.base import _Frozen, _int, _lines, _split_rc

LISTENING_PORTS = "ss -Htlnu"
# systemctl's exit code and its stderr are part of the answer ("no systemd here"), so
# both are folded into stdout.
FAILED_SERVICES = (
    'systemctl list-units --state=failed --plain --no-legend --no-pager 2>&1; echo "rc=$?"'
)


# The SSH daemon's effective settings (its config files as sshd reads them), as root.
SSHD_EFFECTIVE = "/usr/sbin/sshd -T 2>&1"
# What the logs hold for review, counted, never copied (a log line can hold anything, a
# password typed as a user name included): error lines and failed SSH logins, from the
# journal over 7 days when it has entries, else from the current log files.
_AUTH_FAILED = (
    "Failed password|Failed publickey|Invalid user|authentication failure"
    "|Connection closed by authenticating user|maximum authentication attempts"
)
_LOG_ERRORS = "error|panic|segfault|oom-killer|Out of memory"
LOG_REVIEW = (
    "if command -v journalctl >/dev/null 2>&1"
    ' && [ -n "$(journalctl -q -n 1 --no-pager 2>/dev/null)" ]; then'
    " echo source=journal;"
    ' echo "errors=$(journalctl -q -p err --since "7 days ago" --no-pager 2>/dev/null'
    ' | wc -l)";'
    ' echo "auth_failures=$(journalctl -q --since "7 days ago" --no-pager 2>/dev/null'
    f" | grep -cE '{_AUTH_FAILED}')\";"
    " else echo source=files;"
    " for f in /var/log/auth.log /var/log/secure /var/log/sshd.log /var/log/syslog"
    ' /var/log/messages; do [ -r "$f" ] || continue;'
    f' echo "file=$f errors=$(grep -ciE \'{_LOG_ERRORS}\' "$f")'
    f' auth_failures=$(grep -cE \'{_AUTH_FAILED}\' "$f")"; done; fi; true'
)
# The inbound filter: nftables' ruleset, else iptables' INPUT chain, else no tool. The tool
# and the exit code are printed, so "no firewall tool" and "not allowed" are answers.
FIREWALL = (
    "if command -v nft >/dev/null 2>&1; then echo tool=nft; nft list ruleset 2>&1;"
    ' echo "rc=$?"; elif command -v iptables >/dev/null 2>&1; then echo tool=iptables;'
    ' iptables -S INPUT 2>&1; echo "rc=$?"; else echo tool=none; fi'
)


class ListeningPort(_Frozen):
    """A listening TCP socket or a bound UDP socket from ``ss``."""

    proto: Literal["tcp", "udp"]
    address: str = Field(description="IP without brackets, or '*' for every address.")
    port: int
    interface: str | None = Field(default=None, description="Bound device / scope (%lo).")


class FailedServices(_Frozen):
    """Failed systemd units, or why they cannot be known."""

    known: bool = Field(description="False when systemd is not running: never 'none failed'.")
    units: list[str] = Field(default_factory=list)
    reason: str | None = Field(default=None, description="Why not known.")


class SshdSettings(_Frozen):
    """The SSH daemon settings a security audit reads (``sshd -T``, lower-case values)."""

    permit_root_login: str = Field(description="yes, prohibit-password, forced-commands-only, no.")
    password_authentication: bool
    kbd_interactive_authentication: bool = Field(
        description="Keyboard-interactive: passwords by another route (PAM)."
    )
    permit_empty_passwords: bool

    def weaknesses(self) -> list[str]:
        """What lets someone in with a password or as root by password, as sshd spells it."""
        out: list[str] = []
        if self.permit_root_login == "yes":
            out.append("PermitRootLogin yes")
        if self.password_authentication:
            out.append("PasswordAuthentication yes")
        if self.kbd_interactive_authentication:
            out.append("KbdInteractiveAuthentication yes")
        if self.permit_empty_passwords:
            out.append("PermitEmptyPasswords yes")
        return out


class Firewall(_Frozen):
    """Whether inbound traffic the rules do not allow is dropped, or why it is not known."""

    tool: Literal["nft", "iptables"] | None = Field(description="None: neither is installed.")
    known: bool = Field(description="False: the tool is missing or could not answer.")
    default_deny: bool | None = Field(
        default=None, description="Inbound traffic no rule accepts is dropped or rejected."
    )
    detail: str | None = Field(default=None, description="Why unknown, or what was found.")


class LogReview(_Frozen):
    """Counts of what the logs hold for a person to review (never the lines)."""

    source: Literal["journal", "files"]
    files: list[str] = Field(default_factory=list, description="The files read (source files).")
    errors: int = Field(description="Error lines (journal priority err and worse, or matched).")
    auth_failures: int = Field(description="Failed SSH logins (wrong password, key, user).")

    @property
    def where(self) -> str:
        """Where the counts come from, for a sentence."""
        return "the journal, 7 days" if self.source == "journal" else ", ".join(self.files)


def _split_endpoint(fact: str, endpoint: str, line: str) -> tuple[str, int, str | None]:
    """``[::1]:22``, ``[fe80::1]%eth0:546``, ``127.0.0.53%lo:53``, ``*:80`` -> parts."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host:
        raise FactParseError(fact, line, f"bad local address {endpoint!r}")
    interface: str | None = None
    if host.startswith("["):
        address, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not rest.startswith("%")):
            raise FactParseError(fact, line, f"bad IPv6 address {endpoint!r}")
        interface = rest[1:] or None
    else:
        address, _, scope = host.partition("%")
        interface = scope or None
    return address, _int(fact, port, line), interface


def parse_ss_listening(text: str) -> list[ListeningPort]:
    """Parse ``ss -Htlnu`` (``LISTENING_PORTS``): listening TCP and bound UDP sockets.

    Addresses lose their brackets (``[::]`` -> ``::``), a ``%dev`` scope becomes
    ``interface``, and ``*`` (every IPv4 and IPv6 address) stays ``*``. Identical
    sockets (SO_REUSEPORT workers) are listed once.

    Raises:
        FactParseError: a line is not ``proto state recvq sendq local peer``.
    """
    ports: list[ListeningPort] = []
    for line in _lines(text):
        parts = line.split()
        if len(parts) < 6 or parts[0] not in ("tcp", "udp"):
            raise FactParseError("listening_ports", line, "expected 'tcp|udp state q q local peer'")
        address, port, interface = _split_endpoint("listening_ports", parts[4], line)
        entry = ListeningPort(
            proto="tcp" if parts[0] == "tcp" else "udp",
            address=address,
            port=port,
            interface=interface,
        )
        if entry not in ports:
            ports.append(entry)
    return ports


_NO_SYSTEMD_MARKERS = (
    "System has not been booted with systemd",
    "Failed to connect to bus",
    "Failed to connect to system scope bus",
    "systemctl: not found",
    "systemctl: command not found",
)


def parse_failed_services(text: str) -> FailedServices:
    """Parse ``FAILED_SERVICES``: failed units, or unknown when systemd is not running.

    On a host without systemd (containers, our sandbox hosts) systemctl cannot
    answer; that is reported as ``known=False`` with systemctl's own words, never as
    "no failed units".

    Raises:
        FactParseError: no ``rc=`` line, an unexpected non-zero exit, or a line that
            is not a unit.
    """
    rc, body = _split_rc("failed_services", text)
    for line in body:
        if any(marker in line for marker in _NO_SYSTEMD_MARKERS):
            return FailedServices(known=False, reason=body[0].strip())
    if rc == 127:
        return FailedServices(known=False, reason="systemctl is not installed")
    if rc != 0:
        raise FactParseError("failed_services", body[-1] if body else f"rc={rc}", f"exit {rc}")
    units: list[str] = []
    for line in body:
        # --plain drops the status bullet, but older systemd printed one anyway.
        words = line.strip().lstrip("●*").split()
        if not words or "." not in words[0]:
            raise FactParseError("failed_services", line, "not a unit line")
        units.append(words[0])
    return FailedServices(known=True, units=units)


_SSHD_YES_NO = {"yes": True, "no": False}


def parse_sshd_effective(text: str) -> SshdSettings:
    """Parse ``sshd -T`` (``SSHD_EFFECTIVE``): one ``keyword value`` per line.

    Raises:
        FactParseError: sshd refused its configuration (its message is the line), or a
            keyword the audit reads is missing or has a value sshd does not print.
    """
    values: dict[str, str] = {}
    for line in _lines(text):
        keyword, _, value = line.strip().partition(" ")
        if not keyword.isalnum() or keyword.lower() != keyword:
            raise FactParseError("sshd", line, "not a 'keyword value' line of sshd -T")
        values.setdefault(keyword, value.strip())

    def flag(keyword: str) -> bool:
        value = values.get(keyword)
        if value not in _SSHD_YES_NO:
            raise FactParseError("sshd", f"{keyword} {value or ''}".strip(), "expected yes or no")
        return _SSHD_YES_NO[value]

    root = values.get("permitrootlogin")
    # sshd -T prints prohibit-password under its old name.
    root = "prohibit-password" if root == "without-password" else root
    if root not in ("yes", "prohibit-password", "forced-commands-only", "no"):
        raise FactParseError("sshd", f"permitrootlogin {root or ''}".strip(), "unknown value")
    return SshdSettings(
        permit_root_login=root,
        password_authentication=flag("passwordauthentication"),
        # OpenSSH 8.7 renamed challengeresponseauthentication; older ones print that.
        kbd_interactive_authentication=(
            flag("kbdinteractiveauthentication")
            if "kbdinteractiveauthentication" in values
            else flag("challengeresponseauthentication")
        ),
        permit_empty_passwords=flag("permitemptypasswords"),
    )


_NFT_INPUT_CHAIN = re.compile(
    r"type\s+filter\s+hook\s+input\b[^;]*;(?:\s*device[^;]*;)?\s*policy\s+(accept|drop)\s*;"
)


def _drops_all(rule: str) -> bool:
    """``-A INPUT -j DROP`` / ``-j REJECT [--reject-with ...]``: no match before the jump."""
    words = rule.split()
    return words[:3] == ["-A", "INPUT", "-j"] and len(words) > 3 and words[3] in ("DROP", "REJECT")


def parse_firewall(text: str) -> Firewall:
    """Parse ``FIREWALL``: is inbound traffic that no rule accepts dropped?

    nftables: yes when a base chain on the ``input`` hook has ``policy drop`` (a packet
    must pass every base chain of the hook). iptables: yes when the INPUT chain's policy
    is DROP, or its last rule drops or rejects everything (``-A INPUT -j DROP``).

    Raises:
        FactParseError: no ``tool=`` line, or no ``rc=`` line after a tool's output.
    """
    lines = _lines(text)
    if not lines or not lines[0].startswith("tool="):
        raise FactParseError("firewall", lines[0] if lines else text, "expected tool=...")
    tool = lines[0].removeprefix("tool=").strip()
    if tool == "none":
        return Firewall(tool=None, known=False, detail="neither nft nor iptables is installed")
    if tool not in ("nft", "iptables"):
        raise FactParseError("firewall", lines[0], "expected tool=nft, iptables or none")
    rc, body = _split_rc("firewall", "\n".join(lines[1:]))
    if rc != 0:
        said = body[0].strip() if body else f"exit {rc}"
        return Firewall(tool=tool, known=False, detail=f"{tool} could not answer: {said}")
    if tool == "nft":
        policies = _NFT_INPUT_CHAIN.findall("\n".join(body))
        if not policies:
            return Firewall(tool="nft", known=True, default_deny=False, detail="no input chain")
        deny = "drop" in policies
        return Firewall(
            tool="nft",
            known=True,
            default_deny=deny,
            detail="an input chain drops by default" if deny else "input chains accept by default",
        )
    rules = [" ".join(line.split()) for line in body]
    policy = next((r.split()[2] for r in rules if r.startswith("-P INPUT ")), None)
    if policy is None:
        raise FactParseError("firewall", body[0] if body else "", "no -P INPUT line")
    last_drops = _drops_all(rules[-1])
    return Firewall(
        tool="iptables",
        known=True,
        default_deny=policy == "DROP" or last_drops,
        detail=f"INPUT policy {policy}" + (", last rule drops all" if last_drops else ""),
    )


_LOG_FILE_LINE = re.compile(r"^file=(\S+) errors=(\d+) auth_failures=(\d+)$")


def parse_log_review(text: str) -> LogReview:
    """Parse ``LOG_REVIEW``: counts from the journal, or per log file (added up).

    Raises:
        FactParseError: no ``source=`` line, or a line that is not a count.
    """
    lines = [line.strip() for line in _lines(text)]
    if not lines or lines[0] not in ("source=journal", "source=files"):
        raise FactParseError("log_review", lines[0] if lines else text, "expected source=...")
    if lines[0] == "source=journal":
        values = dict(line.partition("=")[::2] for line in lines[1:])
        try:
            return LogReview(
                source="journal",
                errors=int(values["errors"]),
                auth_failures=int(values["auth_failures"]),
            )
        except (KeyError, ValueError):
            raise FactParseError(
                "log_review", text, "expected errors=N and auth_failures=N"
            ) from None
    files: list[str] = []
    errors = failures = 0
    for line in lines[1:]:
        match = _LOG_FILE_LINE.match(line)
        if match is None:
            raise FactParseError("log_review", line, "expected file=... errors=N auth_failures=N")
        files.append(match.group(1))
        errors += int(match.group(2))
        failures += int(match.group(3))
    return LogReview(source="files", files=files, errors=errors, auth_failures=failures)
