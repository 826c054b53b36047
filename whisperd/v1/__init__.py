"""Generated gRPC modules of the whisperd.v1 API.

Made by `make gen` (tools/gen_proto.py) from proto/whisperd/v1/*.proto and committed;
do not edit: change the .proto files and run `make gen` again.
"""
