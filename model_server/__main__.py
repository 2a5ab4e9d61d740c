"""`python -m model_server`: the embedded TF Serving-compatible server."""

from model_server.main import main

raise SystemExit(main())
