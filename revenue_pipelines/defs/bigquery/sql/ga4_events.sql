-- The GA4 BigQuery export's events of the window's days (daily tables events_YYYYMMDD), one row
-- per event: the event_params used downstream flattened into columns, the session and the
-- traffic-source fields kept. Intraday tables (events_intraday_*) sort after every date suffix.
-- Names: ${project}, ${dataset} (checked before use). Values: @first_day, @last_day ('YYYYMMDD').
-- A parameter may arrive in any of the value fields, so each is read from the one GA4 uses for it
-- and its usual alternates.
WITH events AS (
  SELECT
    event.*,
    (SELECT p.value.int_value FROM UNNEST(event.event_params) AS p WHERE p.key = 'ga_session_id') AS ga_session_id,
    (SELECT p.value.int_value FROM UNNEST(event.event_params) AS p WHERE p.key = 'ga_session_number') AS ga_session_number,
    (SELECT p.value.string_value FROM UNNEST(event.event_params) AS p WHERE p.key = 'page_location') AS page_location,
    (SELECT p.value.string_value FROM UNNEST(event.event_params) AS p WHERE p.key = 'page_title') AS page_title,
    (
      SELECT COALESCE(p.value.string_value, CAST(p.value.int_value AS STRING))
      FROM UNNEST(event.event_params) AS p WHERE p.key = 'session_engaged'
    ) AS session_engaged,
    (SELECT p.value.int_value FROM UNNEST(event.event_params) AS p WHERE p.key = 'engagement_time_msec') AS engagement_time_msec,
    (SELECT p.value.string_value FROM UNNEST(event.event_params) AS p WHERE p.key = 'source') AS param_source,
    (SELECT p.value.string_value FROM UNNEST(event.event_params) AS p WHERE p.key = 'medium') AS param_medium,
    (SELECT p.value.string_value FROM UNNEST(event.event_params) AS p WHERE p.key = 'campaign') AS param_campaign,
    (
      SELECT COALESCE(p.value.double_value, p.value.float_value, CAST(p.value.int_value AS FLOAT64))
      FROM UNNEST(event.event_params) AS p WHERE p.key = 'value'
    ) AS value,
    (SELECT p.value.string_value FROM UNNEST(event.event_params) AS p WHERE p.key = 'currency') AS currency,
    (SELECT p.value.string_value FROM UNNEST(event.event_params) AS p WHERE p.key = 'transaction_id') AS transaction_id
  FROM `${project}.${dataset}.events_*` AS event
  WHERE _TABLE_SUFFIX BETWEEN @first_day AND @last_day
)
SELECT
  PARSE_DATE('%Y%m%d', event_date) AS event_date,
  event_timestamp,
  event_name,
  user_pseudo_id,
  user_id,
  CONCAT(user_pseudo_id, '.', CAST(ga_session_id AS STRING)) AS session_id,
  ga_session_id,
  ga_session_number,
  session_engaged = '1' AS session_engaged,
  engagement_time_msec,
  page_location,
  page_title,
  param_source AS session_source,
  param_medium AS session_medium,
  param_campaign AS session_campaign,
  collected_traffic_source.manual_source AS collected_source,
  collected_traffic_source.manual_medium AS collected_medium,
  collected_traffic_source.manual_campaign_name AS collected_campaign,
  traffic_source.source AS first_user_source,
  traffic_source.medium AS first_user_medium,
  traffic_source.name AS first_user_campaign,
  value,
  currency,
  transaction_id,
  device.category AS device_category,
  device.operating_system AS device_operating_system,
  geo.country AS country,
  geo.city AS city,
  platform,
  stream_id
FROM events
