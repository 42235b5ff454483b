"""dnf facts (RHEL family): pending updates and whether a reboot is needed, each command
beside its parser (the models are shared with apt: ``PackageUpdate``, ``RebootRequired``).
"""

from __future__ import annotations

import re

from core.errors import FactParseError
from tasks.facts.base import PackageUpdate, RebootRequired, _is_security, _split_rc

# dnf check-update exits 100 when updates exist, so the exit code is printed rather
# than treated as a failure.
DNF_CHECK_UPDATE = 'dnf -q check-update; echo "rc=$?"'
DNF_NEEDS_RESTARTING = 'needs-restarting -r; echo "rc=$?"'


def parse_dnf_check_update(text: str) -> list[PackageUpdate]:
    """Parse ``DNF_CHECK_UPDATE``: ``name.arch  version  repo`` lines and ``rc=``.

    ``dnf check-update`` exits 100 when updates exist, 0 when none, 1 on error. It
    does not print the installed version (``current`` is None) and cannot tell
    security updates apart, so ``security`` is only true for a repository whose id
    ends in ``-security``. The "Obsoleting Packages" section is not read. A long
    ``name.arch`` that dnf wraps onto its own line is joined with the next.

    Raises:
        FactParseError: rc is neither 0 nor 100, or a line has not three columns.
    """
    rc, body = _split_rc("dnf_updates", text)
    if rc not in (0, 100):
        raise FactParseError("dnf_updates", body[-1] if body else f"rc={rc}", f"exit {rc}")
    updates: list[PackageUpdate] = []
    pending = ""
    for raw in body:
        if raw.startswith("Obsoleting Packages"):
            break
        line = f"{pending} {raw.strip()}" if pending else raw.strip()
        parts = line.split()
        if len(parts) == 1:
            pending = line
            continue
        pending = ""
        if len(parts) != 3 or "." not in parts[0]:
            raise FactParseError("dnf_updates", raw, "expected 'name.arch version repo'")
        name, arch = parts[0].rsplit(".", 1)
        updates.append(
            PackageUpdate(
                name=name,
                current=None,
                candidate=parts[1],
                suites=[parts[2]],
                arch=arch,
                security=_is_security([parts[2]]),
            )
        )
    if pending:
        raise FactParseError("dnf_updates", pending, "package line without its columns")
    if rc == 100 and not updates:
        raise FactParseError("dnf_updates", "rc=100", "exit 100 but no package listed")
    return updates


def parse_dnf_needs_restarting(text: str) -> RebootRequired:
    """Parse ``DNF_NEEDS_RESTARTING`` (``needs-restarting -r``).

    Exit 1 with "Reboot is required" means a reboot is needed (the ``  * name``
    lines say which packages); exit 0 with "Reboot should not be necessary" means
    not. Anything else (dnf failing with exit 1 and no verdict, the tool missing) is
    an error, never a guess.

    Raises:
        FactParseError: exit code and verdict do not agree, or there is no verdict.
    """
    rc, body = _split_rc("dnf_reboot_required", text)
    joined = "\n".join(body)
    if rc == 1 and "Reboot is required" in joined:
        packages = [m.group(1) for line in body if (m := re.match(r"^\s+\*\s+(\S+)", line))]
        return RebootRequired(required=True, packages=packages)
    if rc == 0 and "Reboot should not be necessary" in joined:
        return RebootRequired(required=False)
    raise FactParseError(
        "dnf_reboot_required", body[-1] if body else f"rc={rc}", f"no verdict (exit {rc})"
    )


# -------------------------------------------------------------------------- registry
