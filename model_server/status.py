"""GetModelStatus answers, shared by the gRPC ModelService and REST `GET /v1/models/...`."""

from __future__ import annotations

from tensorflow_serving.apis import get_model_status_pb2

from model_server.errors import CODE_NUMBERS


def model_status_response(statuses) -> get_model_status_pb2.GetModelStatusResponse:
    """The response listing `statuses` (manager.VersionStatus, in the order given)."""
    response = get_model_status_pb2.GetModelStatusResponse()
    for st in statuses:
        item = response.model_version_status.add()
        item.version = st.version
        item.state = get_model_status_pb2.ModelVersionStatus.State.Value(st.state)
        item.status.error_code = CODE_NUMBERS[st.error_code]
        item.status.error_message = st.error_message
    return response
