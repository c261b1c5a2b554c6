"""One MQTT 5 enhanced authentication exchange: the steps between an authenticator and a client."""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.logger import Logger

from twisted_mqtt.interfaces import AuthStep, ClientInfo, IEnhancedAuthenticator
from twisted_mqtt.packets import ReasonCode

log = Logger()


class AuthExchange:
    """Feeds the client's Authentication Data to the authenticator step by step.

    ``on_answer(step)`` is called with each ``AuthStep``: a continue (0x18) asks the client for
    more, anything else ends the exchange.  ``pending`` is True while the authenticator has not
    answered, so that the connection holds other input meanwhile.
    """

    def __init__(self, authenticator: IEnhancedAuthenticator, client: ClientInfo, method: str,
                 on_answer: Callable[[AuthStep], None]) -> None:
        self.authenticator = authenticator
        self.client = client
        self.method = method
        self.on_answer = on_answer
        self.state: Any = None
        self.pending = False

    def step(self, data: Optional[bytes]) -> None:
        """Give the authenticator the client's next Authentication Data."""
        self.pending = True
        try:
            answer = self.authenticator.step(self.client, self.method, data, self.state)
        except Exception:
            log.failure("enhanced authenticator failed for {client_id}",
                        client_id=self.client.client_id)
            answer = AuthStep(ReasonCode.UNSPECIFIED_ERROR)
        if hasattr(answer, "addCallbacks"):
            answer.addCallbacks(self._answered, self._failed)
        else:
            self._answered(answer)

    def _failed(self, failure: Any) -> None:
        log.failure("enhanced authenticator failed for {client_id}", failure,
                    client_id=self.client.client_id)
        self._answered(AuthStep(ReasonCode.UNSPECIFIED_ERROR))

    def _answered(self, answer: AuthStep) -> None:
        self.pending = False
        self.state = answer.state
        self.on_answer(answer)
