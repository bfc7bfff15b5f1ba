-- Every invoice that changed in the window (issued, paid, voided), with its billing account's CRM
-- id and its payments summed: the finance truth for won revenue.
-- Names: ${project}, ${dataset} (checked before use). Values: @window_start, @window_end (TIMESTAMP).
-- The account is a LEFT JOIN: an invoice whose account is missing is quarantined, not dropped.
WITH paid AS (
  SELECT
    invoice_id,
    COUNT(*) AS payment_count,
    SUM(amount_cents) AS amount_paid_cents,
    MAX(paid_at) AS last_paid_at
  FROM `${project}.${dataset}.payments`
  GROUP BY invoice_id
)
SELECT
  invoice.invoice_id AS id,
  invoice.billing_account_id,
  account.name AS billing_account_name,
  account.crm_source,
  account.external_account_id,
  account.billing_email,
  invoice.crm_deal_id,
  invoice.status,
  invoice.currency,
  invoice.subtotal_cents,
  invoice.tax_cents,
  invoice.total_cents,
  COALESCE(paid.amount_paid_cents, 0) AS amount_paid_cents,
  COALESCE(paid.payment_count, 0) AS payment_count,
  invoice.issued_at,
  invoice.due_date,
  paid.last_paid_at,
  invoice.voided_at,
  invoice.updated_at AS changed_at
FROM `${project}.${dataset}.invoices` AS invoice
LEFT JOIN `${project}.${dataset}.accounts` AS account
  ON account.billing_account_id = invoice.billing_account_id
LEFT JOIN paid
  ON paid.invoice_id = invoice.invoice_id
WHERE invoice.updated_at >= @window_start
  AND invoice.updated_at < @window_end
