"""``python -m service.worker``: the training worker process (:mod:`service.worker.launch`)."""

import sys

from service.worker.launch import main

sys.exit(main())
