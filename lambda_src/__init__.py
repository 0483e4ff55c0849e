"""The data plane: code that runs inside a function, on AWS Lambda or in the local runtime.

It depends only on the standard library and boto3 (present in every Lambda Python
runtime); pyarrow is used when importable.
"""
