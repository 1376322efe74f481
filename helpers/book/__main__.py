"""``python -m helpers.book …``: the book runner's command line (see :mod:`helpers.book.runner`)."""

import sys

from helpers.book.runner import main

sys.exit(main())
