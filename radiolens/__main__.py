"""``python -m radiolens`` is the same as the ``radiolens`` command."""

from radiolens.cli import main

raise SystemExit(main())
