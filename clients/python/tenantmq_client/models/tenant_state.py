from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast
from uuid import UUID

from attrs import define as _attrs_define
from attrs import field as _attrs_field
from dateutil.parser import isoparse

if TYPE_CHECKING:
    from ..models.tenant_limits import TenantLimits


T = TypeVar("T", bound="TenantState")


@_attrs_define
class TenantState:
    """A tenant as it was after one event of its stream.

    Attributes:
        hash_ (str): That event's hash: compare it with an export or a recorded head.
        id (UUID):
        limits (None | TenantLimits): The limits set on the tenant by then; null while none were set (the configured
            defaults applied).
        name (str):
        position (int): Global position of that event.
        recorded_at (datetime.datetime): When that event was recorded.
        status (str): `active` or `deleted`.
        version (int): Version of the last event folded in (the number of events).
        workers (int): Desired worker pool size.
    """

    hash_: str
    id: UUID
    limits: None | TenantLimits
    name: str
    position: int
    recorded_at: datetime.datetime
    status: str
    version: int
    workers: int
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        from ..models.tenant_limits import TenantLimits

        hash_ = self.hash_

        id = str(self.id)

        limits: dict[str, Any] | None
        if isinstance(self.limits, TenantLimits):
            limits = self.limits.to_dict()
        else:
            limits = self.limits

        name = self.name

        position = self.position

        recorded_at = self.recorded_at.isoformat()

        status = self.status

        version = self.version

        workers = self.workers

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "hash": hash_,
                "id": id,
                "limits": limits,
                "name": name,
                "position": position,
                "recorded_at": recorded_at,
                "status": status,
                "version": version,
                "workers": workers,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        from ..models.tenant_limits import TenantLimits

        d = dict(src_dict)
        hash_ = d.pop("hash")

        id = UUID(d.pop("id"))

        def _parse_limits(data: object) -> None | TenantLimits:
            if data is None:
                return data
            try:
                if not isinstance(data, dict):
                    raise TypeError()
                limits_type_1 = TenantLimits.from_dict(data)

                return limits_type_1
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(None | TenantLimits, data)

        limits = _parse_limits(d.pop("limits"))

        name = d.pop("name")

        position = d.pop("position")

        recorded_at = isoparse(d.pop("recorded_at"))

        status = d.pop("status")

        version = d.pop("version")

        workers = d.pop("workers")

        tenant_state = cls(
            hash_=hash_,
            id=id,
            limits=limits,
            name=name,
            position=position,
            recorded_at=recorded_at,
            status=status,
            version=version,
            workers=workers,
        )

        tenant_state.additional_properties = d
        return tenant_state

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
