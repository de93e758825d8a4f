"""The pytest plugin's rooms, one job each; :mod:`nemaudit.plugin` holds only the hooks.

- :mod:`.options`: the ``--nemaudit-*`` option group and its ini twins;
- :mod:`.fixture`: the ``nemaudit`` fixture, a facade over the Auditor;
- :mod:`.properties`: ``nemaudit_*.toml`` spec files, their items, running them;
- :mod:`.records`: per-item records, and the JSON/HTML/terminal reports made from them;
- :mod:`.messages`: what a failing property prints.

The one-way rule: plugin → harness → session state → Auditor → ``audit/`` → the lower
floors. Nothing below the harness imports it.
"""
