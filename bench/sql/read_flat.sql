-- What both contenders read: every row of the benchmark's table.
SELECT * FROM `${project}.${dataset}.ga4_events_flat`
