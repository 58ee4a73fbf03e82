"""The OpenCTI stand-in's resolvers for the platform and its connectors: pycti's ``health_check``
(``api/opencti_api_client.py``), ``register``, ``ping``, ``read``, ``unregister``
(``api/opencti_api_connector.py``); refusals as opencti-graphql's ``src/domain/connector.js``."""

from __future__ import annotations

from typing import Any

from tests.standins.opencti_graphql import data_error
from tests.standins.opencti_state import PlatformState, now


def health(platform: PlatformState, variables: dict[str, Any], query: str) -> dict[str, Any]:
    return {"data": {"about": {"version": platform.version}}}


def register(platform: PlatformState, variables: dict[str, Any], query: str) -> dict[str, Any]:
    data = dict(variables.get("input") or {})
    connector_id = str(data.get("id"))
    platform.registrations.append(data)
    existing = platform.connectors.get(connector_id, {})
    state = existing.get("connector_state")
    platform.connectors[connector_id] = {**data, "connector_state": state}
    a = platform.amqp
    return {
        "data": {
            "registerConnector": {
                "id": connector_id,
                "connector_state": state,
                # 7.x: the platform's public JWKS (pycti 7 reads it at start; a key set with no
                # key is enough for a connector that never listens).
                "jwks": '{"keys": []}',
                "config": {
                    "connection": {
                        "host": a.host,
                        "vhost": a.vhost,
                        "use_ssl": a.use_ssl,
                        "port": a.port,
                        "user": a.user,
                        "pass": a.password,
                    },
                    # 6.9+: the platform's own S3 settings (pycti 6.9+ reads them at start).
                    "s3": {
                        "endpoint": "minio",
                        "port": 9000,
                        "use_ssl": False,
                        "bucket_name": "opencti-bucket",
                        "bucket_region": "us-east-1",
                        "access_key": "standin-access",
                        "secret_key": "standin-secret",
                    },
                    "listen": f"listen_{connector_id}",
                    "listen_routing": f"listen_routing_{connector_id}",
                    "listen_exchange": a.listen_exchange,
                    "push": f"push_{connector_id}",
                    "push_routing": f"push_routing_{connector_id}",
                    "push_exchange": a.push_exchange,
                },
                "connector_user_id": platform.connector_user_id,
            }
        }
    }


def ping(platform: PlatformState, variables: dict[str, Any], query: str) -> dict[str, Any]:
    connector_id = str(variables.get("id"))
    connector = platform.connectors.get(connector_id)
    if connector is None:
        # pingConnector in opencti-graphql src/domain/connector.js.
        return data_error(
            "pingConnector",
            "No connector found with the specified ID",
            "FUNCTIONAL_ERROR",
            http_status=400,
            genre="BUSINESS",
            id=connector_id,
        )
    platform.pings.append(dict(variables))
    connector["connector_state"] = variables.get("state")
    connector["connector_info"] = variables.get("connectorInfo")
    return {
        "data": {
            "pingConnector": {
                "id": connector_id,
                "connector_state": connector["connector_state"],
                "connector_info": connector["connector_info"],
            }
        }
    }


def connector(platform: PlatformState, variables: dict[str, Any], query: str) -> dict[str, Any]:
    """``connector(id)``, as pycti's ``api.connector.read`` asks it.

    ``connector_queue_details`` is the platform's ``queueDetails(cn.id)``
    (opencti-graphql ``src/resolvers/connector.js``), which reads the connector's push queue
    from RabbitMQ's management API (``getConnectorQueueDetails`` in
    ``src/database/rabbitmq.js``): ``messages_number`` = the queue's ``messages``,
    ``messages_size`` = its ``message_bytes``. Here both are what
    :meth:`~tests.standins.opencti_state.PlatformState.set_queue_size` set.
    """
    connector_id = str(variables.get("id"))
    registered = platform.connectors.get(connector_id)
    if registered is None:
        return {"data": {"connector": None}}
    platform.queue_reads += 1
    a = platform.amqp
    return {
        "data": {
            "connector": {
                "id": connector_id,
                "name": registered.get("name"),
                "active": True,
                "auto": bool(registered.get("auto")),
                "only_contextual": bool(registered.get("only_contextual")),
                "connector_type": registered.get("type"),
                "connector_scope": registered.get("scope") or [],
                "connector_state": registered.get("connector_state"),
                "connector_queue_details": {
                    "messages_number": platform.queue_messages,
                    "messages_size": platform.queue_bytes,
                },
                "updated_at": now(),
                "created_at": now(),
                "config": {
                    "listen": f"listen_{connector_id}",
                    "listen_exchange": a.listen_exchange,
                    "push": f"push_{connector_id}",
                    "push_exchange": a.push_exchange,
                    "push_routing": f"push_routing_{connector_id}",
                },
                "built_in": False,
            }
        }
    }


def delete_connector(
    platform: PlatformState, variables: dict[str, Any], query: str
) -> dict[str, Any]:
    connector_id = str(variables.get("id"))
    platform.deleted_connectors.append(connector_id)
    platform.connectors.pop(connector_id, None)
    for work_id in [w.id for w in platform.works.values() if w.connector_id == connector_id]:
        del platform.works[work_id]
    return {"data": {"deleteConnector": connector_id}}
