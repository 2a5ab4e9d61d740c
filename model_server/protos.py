"""Config messages that tensorflow-serving-api does not ship, built at import time.

`BatchingParameters` (servables/tensorflow/session_bundle_config.proto),
`MonitoringConfig` (config/monitoring_config.proto) and `SSLConfig`
(config/ssl_config.proto) are not in the pip package, and
grpcio-tools cannot be installed next to this protobuf. So the descriptors are declared here
with descriptor_pb2, with TF Serving's package, names and field numbers, and turned into
message classes by message_factory. text_format then parses the very files the real
`tensorflow_model_server` reads.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

_F = descriptor_pb2.FieldDescriptorProto

# (name, number, type, label, type_name)
_BATCHING_FIELDS = (
    ("max_batch_size", 1, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.Int64Value"),
    ("batch_timeout_micros", 2, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.Int64Value"),
    ("max_enqueued_batches", 3, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.Int64Value"),
    ("num_batch_threads", 4, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.Int64Value"),
    ("thread_pool_name", 5, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.StringValue"),
    ("allowed_batch_sizes", 6, _F.TYPE_INT64, _F.LABEL_REPEATED, None),
    ("pad_variable_length_inputs", 7, _F.TYPE_BOOL, _F.LABEL_OPTIONAL, None),
    # Newer TF Serving releases: accepted, splitting itself is not implemented.
    ("enable_large_batch_splitting", 8, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL,
     ".google.protobuf.BoolValue"),
    ("max_execution_batch_size", 9, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL,
     ".google.protobuf.Int64Value"),
)

_MONITORING_MESSAGES = (
    ("PrometheusConfig", (
        ("enable", 1, _F.TYPE_BOOL, _F.LABEL_OPTIONAL, None),
        ("path", 2, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
    )),
    ("MonitoringConfig", (
        ("prometheus_config", 1, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL,
         ".tensorflow.serving.PrometheusConfig"),
    )),
)

_SSL_FIELDS = (
    ("server_key", 1, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
    ("server_cert", 2, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
    ("custom_ca", 3, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
    ("client_verify", 4, _F.TYPE_BOOL, _F.LABEL_OPTIONAL, None),
)


def _add_message(file_proto, name, fields):
    msg = file_proto.message_type.add(name=name)
    for field_name, number, ftype, label, type_name in fields:
        field = msg.field.add(name=field_name, number=number, type=ftype, label=label)
        if type_name:
            field.type_name = type_name


def _build():
    pool = descriptor_pool.DescriptorPool()
    # the wrapper types must be known to this private pool first
    wrappers_file = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers_file)
    pool.Add(wrappers_file)

    batching = descriptor_pb2.FileDescriptorProto(
        name="uic_model_server/session_bundle_config.proto",
        package="tensorflow.serving", syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    _add_message(batching, "BatchingParameters", _BATCHING_FIELDS)
    pool.Add(batching)

    monitoring = descriptor_pb2.FileDescriptorProto(
        name="uic_model_server/monitoring_config.proto",
        package="tensorflow.serving", syntax="proto3",
    )
    for name, fields in _MONITORING_MESSAGES:
        _add_message(monitoring, name, fields)
    pool.Add(monitoring)

    ssl = descriptor_pb2.FileDescriptorProto(
        name="uic_model_server/ssl_config.proto", package="tensorflow.serving",
        syntax="proto3")
    _add_message(ssl, "SSLConfig", _SSL_FIELDS)
    pool.Add(ssl)

    def cls(full_name):
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(full_name))

    return (cls("tensorflow.serving.BatchingParameters"),
            cls("tensorflow.serving.MonitoringConfig"),
            cls("tensorflow.serving.PrometheusConfig"),
            cls("tensorflow.serving.SSLConfig"))


BatchingParameters, MonitoringConfig, PrometheusConfig, SSLConfig = _build()
