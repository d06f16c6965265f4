"""`python -m worker`: run one taskwire worker process."""

from worker.main import main

main()
