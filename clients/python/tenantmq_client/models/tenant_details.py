from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

from attrs import define as _attrs_define
from attrs import field as _attrs_field
from dateutil.parser import isoparse

if TYPE_CHECKING:
    from ..models.tenant_limits import TenantLimits
    from ..models.tenant_runtime_view import TenantRuntimeView


T = TypeVar("T", bound="TenantDetails")


@_attrs_define
class TenantDetails:
    """A tenant with its runtime.

    Attributes:
        created_at (datetime.datetime):
        id (UUID):
        limits (TenantLimits): The limits that apply to a tenant; null is unlimited.
        name (str):
        queue (str): The queue its messages arrive on.
        runtime (TenantRuntimeView): What is running for a tenant on this instance.
        status (str): `active` (deleted tenants are not shown).
        updated_at (datetime.datetime):
        version (int): Version of the tenant's event stream (number of events).
        workers (int): Desired worker pool size.
    """

    created_at: datetime.datetime
    id: UUID
    limits: TenantLimits
    name: str
    queue: str
    runtime: TenantRuntimeView
    status: str
    updated_at: datetime.datetime
    version: int
    workers: int
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        created_at = self.created_at.isoformat()

        id = str(self.id)

        limits = self.limits.to_dict()

        name = self.name

        queue = self.queue

        runtime = self.runtime.to_dict()

        status = self.status

        updated_at = self.updated_at.isoformat()

        version = self.version

        workers = self.workers

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "created_at": created_at,
                "id": id,
                "limits": limits,
                "name": name,
                "queue": queue,
                "runtime": runtime,
                "status": status,
                "updated_at": updated_at,
                "version": version,
                "workers": workers,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        from ..models.tenant_limits import TenantLimits
        from ..models.tenant_runtime_view import TenantRuntimeView

        d = dict(src_dict)
        created_at = isoparse(d.pop("created_at"))

        id = UUID(d.pop("id"))

        limits = TenantLimits.from_dict(d.pop("limits"))

        name = d.pop("name")

        queue = d.pop("queue")

        runtime = TenantRuntimeView.from_dict(d.pop("runtime"))

        status = d.pop("status")

        updated_at = isoparse(d.pop("updated_at"))

        version = d.pop("version")

        workers = d.pop("workers")

        tenant_details = cls(
            created_at=created_at,
            id=id,
            limits=limits,
            name=name,
            queue=queue,
            runtime=runtime,
            status=status,
            updated_at=updated_at,
            version=version,
            workers=workers,
        )

        tenant_details.additional_properties = d
        return tenant_details

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
