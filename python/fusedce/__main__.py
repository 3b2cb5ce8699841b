"""``python -m fusedce`` runs the demo (see fusedce.demo): a softmax classifier trained on
scikit-learn's bundled handwritten digits with fusedce's fused loss and gradient."""

import sys

from fusedce.demo import main

sys.exit(main())
