"""The ground floor every process stands on: settings, errors, logging and object storage.

Imports nothing else from bigbertha.
"""
