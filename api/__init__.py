"""The query API and explorer page: an HTTP service over the flagged-records database.

``create_app(settings, session_factory)`` builds the FastAPI app (nothing is built at import);
``run_api(db_url, ...)`` serves it with uvicorn for ``latentwatch api``;
``serve_in_thread(app)`` runs it in-process on a free port for the demo and the tests.
"""

from api.app import create_app
from api.server import ApiServer, run_api, serve_in_thread
from api.settings import ApiSettings

__all__ = ["ApiServer", "ApiSettings", "create_app", "run_api", "serve_in_thread"]
