from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, cast
from uuid import UUID

from attrs import define as _attrs_define

from ..types import UNSET, Unset

T = TypeVar("T", bound="PublishRequest")


@_attrs_define
class PublishRequest:
    r"""One message to publish.

    Example:
        {'payload': {'hello': 'world'}}

    Attributes:
        payload (Any): The message: any JSON value PostgreSQL `jsonb` can store (nested at most `max_payload_depth`
            deep, no
            `\u0000`, no lone surrogate, numbers within `numeric`'s range), stored as `jsonb`.
        id (None | Unset | UUID): Idempotency key, per tenant: publishing the same id again never makes a second row,
            whatever its
            payload (the first stored stays, later ones are accepted and dropped). Set it to retry a publish safely
            after an error or a timeout. A new UUIDv7 when absent.
    """

    payload: Any
    id: None | Unset | UUID = UNSET

    def to_dict(self) -> dict[str, Any]:
        payload = self.payload

        id: None | str | Unset
        if isinstance(self.id, Unset):
            id = UNSET
        elif isinstance(self.id, UUID):
            id = str(self.id)
        else:
            id = self.id

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "payload": payload,
            }
        )
        if id is not UNSET:
            field_dict["id"] = id

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        payload = d.pop("payload")

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

        publish_request = cls(
            payload=payload,
            id=id,
        )

        return publish_request
