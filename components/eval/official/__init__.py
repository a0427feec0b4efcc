"""Each benchmark's official scorer, re-implemented from its repository's evaluation code.

One module per benchmark. Each holds the official prompt (where eval builds one), the
official answer extraction (rules, or the official GPT prompt sent to `eval.extractor`)
and the official comparison, kept apart from the project's strict mode (`scoring.py`) so
that the distance between the two can be measured (docs/stages/eval.md).
"""
