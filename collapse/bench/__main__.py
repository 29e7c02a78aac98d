"""`python -m collapse.bench ARGS`: the same as `collapse bench ARGS`."""

import sys

from collapse.bench import main

sys.exit(main())
