"""rock's model gateway: the host side of the in-sandbox ModelProxy (rock/modelproxy.py).

`ModelGateway` runs inside `rock serve`'s event loop; see gateway.py for the walk-through.
"""

from rock.gateway.chunks import Chunk, Subscription
from rock.gateway.gateway import GatewayConfig, GatewayError, ModelAttachment, ModelGateway

__all__ = ["Chunk", "GatewayConfig", "GatewayError", "ModelAttachment", "ModelGateway", "Subscription"]
