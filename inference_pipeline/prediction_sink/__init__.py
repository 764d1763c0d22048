"""The prediction log's hand-off from the online service to the log writer: a durable, cheap
sink the request path appends one record per answered batch to (a local spool file per worker
process, or a Redis stream), and the source the writer reads them back from and acknowledges
once they are committed to the ``predictions`` table.
"""
