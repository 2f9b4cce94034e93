from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, cast

from attrs import define as _attrs_define

from ..types import UNSET, Unset

T = TypeVar("T", bound="SetLimitsRequest")


@_attrs_define
class SetLimitsRequest:
    """Set a tenant's limits. All three together: one absent or null is unlimited.

    Example:
        {'max_queue_depth': 100000, 'publish_burst': 5000, 'publish_rate': 1000}

    Attributes:
        max_queue_depth (int | None | Unset): While the tenant's queue holds this many ready messages or more, a publish
            gets 429 `queue-full`.
        publish_burst (int | None | Unset): Messages accepted at once after a quiet spell (the bucket size), also the
            largest batch; needs
            `publish_rate`; one second of it when null.
        publish_rate (int | None | Unset): Messages per second the publish API accepts for the tenant, across all
            instances; over it a publish
            gets 429 `rate-limited` with `Retry-After`. A batch counts as its size.
    """

    max_queue_depth: int | None | Unset = UNSET
    publish_burst: int | None | Unset = UNSET
    publish_rate: int | None | Unset = UNSET

    def to_dict(self) -> dict[str, Any]:
        max_queue_depth: int | None | Unset
        if isinstance(self.max_queue_depth, Unset):
            max_queue_depth = UNSET
        else:
            max_queue_depth = self.max_queue_depth

        publish_burst: int | None | Unset
        if isinstance(self.publish_burst, Unset):
            publish_burst = UNSET
        else:
            publish_burst = self.publish_burst

        publish_rate: int | None | Unset
        if isinstance(self.publish_rate, Unset):
            publish_rate = UNSET
        else:
            publish_rate = self.publish_rate

        field_dict: dict[str, Any] = {}

        field_dict.update({})
        if max_queue_depth is not UNSET:
            field_dict["max_queue_depth"] = max_queue_depth
        if publish_burst is not UNSET:
            field_dict["publish_burst"] = publish_burst
        if publish_rate is not UNSET:
            field_dict["publish_rate"] = publish_rate

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)

        def _parse_max_queue_depth(data: object) -> int | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(int | None | Unset, data)

        max_queue_depth = _parse_max_queue_depth(d.pop("max_queue_depth", UNSET))

        def _parse_publish_burst(data: object) -> int | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(int | None | Unset, data)

        publish_burst = _parse_publish_burst(d.pop("publish_burst", UNSET))

        def _parse_publish_rate(data: object) -> int | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(int | None | Unset, data)

        publish_rate = _parse_publish_rate(d.pop("publish_rate", UNSET))

        set_limits_request = cls(
            max_queue_depth=max_queue_depth,
            publish_burst=publish_burst,
            publish_rate=publish_rate,
        )

        return set_limits_request
