"""``python -m attnzoo ...`` (and ``torchrun ... -m attnzoo bench cp``): the command line."""

from attnzoo.entry import main

if __name__ == "__main__":
    main()
