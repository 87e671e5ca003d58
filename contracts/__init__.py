"""Contracts that the server and the trainer workers share.

Job records and the job store, job specs, dataset formats and the checkpoint format (manifest,
hashing, verification). Neither ``server`` nor ``trainers`` owns these: both import them here.
"""
