"""``python -m nas_sepconv.cli``: the same as the ``nas-sepconv`` command."""

from . import main

if __name__ == "__main__":
    main()
