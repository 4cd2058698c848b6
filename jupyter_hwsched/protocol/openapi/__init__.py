"""The OpenAPI 3 descriptions of the package's REST APIs, one module per service:

* :mod:`.scheduler`: the scheduler's, served at ``/api/spec``;
* :mod:`.agent`: the node agent's own endpoints and the Kernel Gateway API it serves,
  at ``/hwsched/spec``;
* :mod:`.serverext`: the developer's Jupyter server extension's, at ``/hwsched/api/spec``;

built from the schemas they share (:mod:`.common`). Their limits come from the request
language and the records (:mod:`..request`, :mod:`..records`), so a description cannot drift
from the checks. CI checks each running service against its description with schemathesis:
no input may cause a 5xx, and every response must match what is written there. Each
description is public, like an API's documentation.
"""

from __future__ import annotations

from jupyter_hwsched.protocol.openapi.scheduler import SPEC

__all__ = ["SPEC"]
