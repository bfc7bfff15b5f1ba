-- The benchmark's table: GA4's export events with their top-level and record fields as columns
-- (event_params left out: the emulator's correlated UNNEST subqueries cost about 14 us per row and
-- parameter, so flattening millions of events there takes many minutes; BigQuery does it in seconds).
CREATE OR REPLACE TABLE `${project}.bench.ga4_events_flat` AS
SELECT
  event_date,
  event_timestamp,
  event_name,
  user_pseudo_id,
  user_id,
  user_first_touch_timestamp,
  device.category AS device_category,
  device.operating_system AS device_operating_system,
  geo.country AS country,
  geo.city AS city,
  traffic_source.source AS first_user_source,
  traffic_source.medium AS first_user_medium,
  traffic_source.name AS first_user_campaign,
  collected_traffic_source.manual_source AS collected_source,
  collected_traffic_source.manual_medium AS collected_medium,
  collected_traffic_source.manual_campaign_name AS collected_campaign,
  platform,
  stream_id
FROM `${project}.${dataset}.events_*`
WHERE _TABLE_SUFFIX BETWEEN @first_day AND @last_day
