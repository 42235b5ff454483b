"""Hygiene: the policy's clauses beyond patching, as steps of the maintenance flow and the audit.

One module per clause, each with its command, a pure parser of the command's output
(tested from output recorded on real hosts, ``tests/fixtures/hygiene/``), a pure decision
(findings from the parsed output and the inventory's ``hygiene`` settings) and a thin
task that runs the command over the remote layer, bounded in time:

- :mod:`tasks.hygiene.malware`: ClamAV over the inventory's paths (clamd when it runs),
  stale signatures;
- :mod:`tasks.hygiene.software`: ``apt-get autoremove`` candidates and the inventory's
  ``unwanted`` packages, planned, removed only in the approved change;
- :mod:`tasks.hygiene.services`: enabled and listening services against the server's
  ``allowed_services``, disabled only when the inventory says so and the plan showed it;
- :mod:`tasks.hygiene.logreview`: the journal since the last maintenance, counted (errors
  per unit, OOM kills, I/O errors, failed SSH logins), never copied;
- :mod:`tasks.hygiene.stress`: ``stress-ng`` after patching, with metrics and health
  checks before and after;
- :mod:`tasks.hygiene.processes`: the top processes by CPU and memory at verification.
"""
