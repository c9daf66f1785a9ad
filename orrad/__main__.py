"""``python -m orrad``: the command line (see :mod:`orrad.cli` and :mod:`orrad.entry`)."""

from orrad.entry import main

raise SystemExit(main())
