from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, cast
from uuid import UUID

from attrs import define as _attrs_define

from ..types import UNSET, Unset

T = TypeVar("T", bound="CreateTenantRequest")


@_attrs_define
class CreateTenantRequest:
    """Create a tenant.

    Example:
        {'name': 'acme', 'workers': 3}

    Attributes:
        name (str): 1 to 200 characters, not blank, without control characters, line separators, zero-width characters
            or
            direction marks.
        id (None | Unset | UUID): The tenant's id; generated (UUIDv7) when absent, or derived from the `Idempotency-Key`
            header (then
            leave it out). Creating an existing id is a conflict, also the id of a deleted tenant (ids are never
            reused).
        workers (int | None | Unset): Worker pool size, 1 to `max_workers` (64 unless configured otherwise); the
            configured `workers` when
            absent.
    """

    name: str
    id: None | Unset | UUID = UNSET
    workers: int | None | Unset = UNSET

    def to_dict(self) -> dict[str, Any]:
        name = self.name

        id: None | str | Unset
        if isinstance(self.id, Unset):
            id = UNSET
        elif isinstance(self.id, UUID):
            id = str(self.id)
        else:
            id = self.id

        workers: int | None | Unset
        if isinstance(self.workers, Unset):
            workers = UNSET
        else:
            workers = self.workers

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "name": name,
            }
        )
        if id is not UNSET:
            field_dict["id"] = id
        if workers is not UNSET:
            field_dict["workers"] = workers

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        name = d.pop("name")

        def _parse_id(data: object) -> None | Unset | UUID:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            try:
                if not isinstance(data, str):
                    raise TypeError()
                id_type_0 = UUID(data)

                return id_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(None | Unset | UUID, data)

        id = _parse_id(d.pop("id", UNSET))

        def _parse_workers(data: object) -> int | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(int | None | Unset, data)

        workers = _parse_workers(d.pop("workers", UNSET))

        create_tenant_request = cls(
            name=name,
            id=id,
            workers=workers,
        )

        return create_tenant_request
