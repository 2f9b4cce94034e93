"""Contains all the data models used in inputs/outputs"""

from .chain_break import ChainBreak
from .consumer_failure_view import ConsumerFailureView
from .create_tenant_request import CreateTenantRequest
from .dead_letter_message import DeadLetterMessage
from .dead_letter_page import DeadLetterPage
from .event import Event
from .event_page import EventPage
from .limits_source import LimitsSource
from .liveness import Liveness
from .message import Message
from .message_page import MessagePage
from .problem import Problem
from .publish_batch_request import PublishBatchRequest
from .publish_request import PublishRequest
from .published import Published
from .published_batch import PublishedBatch
from .readiness import Readiness
from .replay_request import ReplayRequest
from .replay_result import ReplayResult
from .set_concurrency_request import SetConcurrencyRequest
from .set_limits_request import SetLimitsRequest
from .stream_head import StreamHead
from .stream_head_page import StreamHeadPage
from .tenant import Tenant
from .tenant_details import TenantDetails
from .tenant_limits import TenantLimits
from .tenant_page import TenantPage
from .tenant_runtime_view import TenantRuntimeView
from .tenant_state import TenantState
from .verification import Verification

__all__ = (
    "ChainBreak",
    "ConsumerFailureView",
    "CreateTenantRequest",
    "DeadLetterMessage",
    "DeadLetterPage",
    "Event",
    "EventPage",
    "LimitsSource",
    "Liveness",
    "Message",
    "MessagePage",
    "Problem",
    "PublishBatchRequest",
    "Published",
    "PublishedBatch",
    "PublishRequest",
    "Readiness",
    "ReplayRequest",
    "ReplayResult",
    "SetConcurrencyRequest",
    "SetLimitsRequest",
    "StreamHead",
    "StreamHeadPage",
    "Tenant",
    "TenantDetails",
    "TenantLimits",
    "TenantPage",
    "TenantRuntimeView",
    "TenantState",
    "Verification",
)
