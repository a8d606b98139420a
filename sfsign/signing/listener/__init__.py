"""The signing pages (issue 14 part 4): where a recipient reads the document, proves their address with a
code, and signs or declines. The daemon starts it through `sfsign.signing.service` (`start_listener`)."""

from sfsign.signing.listener.app import SigningListener, build_app, start_listener
from sfsign.signing.listener.documents import About, Documents, read_about, write_about
from sfsign.signing.listener.flows import Flows
from sfsign.signing.listener.limits import Limit, Limits

__all__ = ["About", "Documents", "Flows", "Limit", "Limits", "SigningListener", "build_app", "read_about",
           "start_listener", "write_about"]
