from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, cast

from attrs import define as _attrs_define
from attrs import field as _attrs_field

from ..models.limits_source import LimitsSource
from ..types import UNSET, Unset

T = TypeVar("T", bound="TenantLimits")


@_attrs_define
class TenantLimits:
    """The limits that apply to a tenant; null is unlimited.

    Attributes:
        source (LimitsSource): Where a tenant's limits come from.
        max_queue_depth (int | None | Unset): Publishes are refused while the queue holds this many ready messages.
        publish_burst (int | None | Unset): The bucket size (largest batch); null with a rate: one second of it.
        publish_rate (int | None | Unset): Messages per second through the publish API.
    """

    source: LimitsSource
    max_queue_depth: int | None | Unset = UNSET
    publish_burst: int | None | Unset = UNSET
    publish_rate: int | None | Unset = UNSET
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        source = self.source.value

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
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "source": source,
            }
        )
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
        source = LimitsSource(d.pop("source"))

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

        tenant_limits = cls(
            source=source,
            max_queue_depth=max_queue_depth,
            publish_burst=publish_burst,
            publish_rate=publish_rate,
        )

        tenant_limits.additional_properties = d
        return tenant_limits

    @property
    def additional_keys(self) -> list[str]:
        return list(self.additional_properties.keys())

    def __getitem__(self, key: str) -> Any:
        return self.additional_properties[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.additional_properties[key] = value

    def __delitem__(self, key: str) -> None:
        del self.additional_properties[key]

    def __contains__(self, key: str) -> bool:
        return key in self.additional_properties
