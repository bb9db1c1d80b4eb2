"""`python -m gad_trl.vllm ...` = `gad-trl vllm-serve ...`."""

import sys

from .serve import serve_main

sys.exit(serve_main())
