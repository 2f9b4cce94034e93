from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, cast

from attrs import define as _attrs_define
from attrs import field as _attrs_field

from ..models.limits_source import LimitsSource

T = TypeVar("T", bound="TenantLimits")


@_attrs_define
class TenantLimits:
    """The limits that apply to a tenant; null is unlimited.

    Attributes:
        max_queue_depth (int | None): Publishes are refused while the queue holds this many ready messages.
        publish_burst (int | None): The bucket size (largest batch); null with a rate: one second of it.
        publish_rate (int | None): Messages per second through the publish API.
        source (LimitsSource): Where a tenant's limits come from.
    """

    max_queue_depth: int | None
    publish_burst: int | None
    publish_rate: int | None
    source: LimitsSource
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        max_queue_depth: int | None
        max_queue_depth = self.max_queue_depth

        publish_burst: int | None
        publish_burst = self.publish_burst

        publish_rate: int | None
        publish_rate = self.publish_rate

        source = self.source.value

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "max_queue_depth": max_queue_depth,
                "publish_burst": publish_burst,
                "publish_rate": publish_rate,
                "source": source,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)

        def _parse_max_queue_depth(data: object) -> int | None:
            if data is None:
                return data
            return cast(int | None, data)

        max_queue_depth = _parse_max_queue_depth(d.pop("max_queue_depth"))

        def _parse_publish_burst(data: object) -> int | None:
            if data is None:
                return data
            return cast(int | None, data)

        publish_burst = _parse_publish_burst(d.pop("publish_burst"))

        def _parse_publish_rate(data: object) -> int | None:
            if data is None:
                return data
            return cast(int | None, data)

        publish_rate = _parse_publish_rate(d.pop("publish_rate"))

        source = LimitsSource(d.pop("source"))

        tenant_limits = cls(
            max_queue_depth=max_queue_depth,
            publish_burst=publish_burst,
            publish_rate=publish_rate,
            source=source,
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
