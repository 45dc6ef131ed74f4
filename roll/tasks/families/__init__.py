"""The generated task families, one module per group; `roll.tasks.suite` collects them
(`.venv/bin/pytest tests/roll/test_suite.py`)."""
