"""GET /metrics: Prometheus text format, for ``metrics.allow_cidrs`` (default: loopback) and
for whoever sends ``Authorization: Bearer <metrics.token>``; others get 403 (or 401 when a
token is configured and theirs is missing or wrong)."""
from __future__ import annotations

import hmac
import ipaddress

from ..errors import AuthError, Forbidden
from ..metrics import CONTENT_TYPE
from .admission import admits, public
from .base import BaseHandler


@admits(GET=public("the metrics from memory (with workers: the shared files)"))
class MetricsHandler(BaseHandler):
    endpoint = "metrics"

    def get(self) -> None:
        self.check_access()
        self.set_header("Content-Type", CONTENT_TYPE)
        self.set_header("Cache-Control", "no-store")
        self.finish(self.svc.metrics.render())

    def check_access(self) -> None:
        """The client IP (through trusted proxies only) in ``metrics.allow_cidrs``, or the
        token (compared in constant time; a wrong one counts as a failed guess)."""
        self.resolve_visitor(check=False)
        s = self.svc.settings
        try:
            ip = ipaddress.ip_address(self.client_ip)
        except ValueError:
            ip = None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip is not None and any(ip in net for net in s.metrics_allow_cidrs
                                  if net.version == ip.version):
            return
        if not s.metrics_token:
            raise Forbidden("The metrics are not served to this address; the operator may "
                            "add it to metrics.allow_cidrs, or set metrics.token.",
                            code="metrics_forbidden")
        self.svc.guesses.check(self.client_ip, s.master_key_guesses_per_minute)
        token = self.bearer()
        if not token:
            raise AuthError("The metrics need `Authorization: Bearer <metrics.token>` from "
                            "this address.", code="missing_api_key")
        if not hmac.compare_digest(token.encode(), s.metrics_token.encode()):
            self.svc.guesses.fail(self.client_ip, s.master_key_guesses_per_minute)
            raise AuthError("Wrong metrics token: the metrics need `Authorization: Bearer "
                            "<metrics.token>`.", code="invalid_api_key")
