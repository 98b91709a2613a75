//! The ledger-volumes projection: per day and transfer code, the count and volume of posted
//! transfers of a ledger. It is kept by the worker's consumer, so it trails the writes by the
//! bus's latency; it is a report, not a balance.

use axum::extract::State;
use axum::response::Response;
use coffer_ledger::LedgerCode;
use http::StatusCode;
use serde::{Deserialize, Deserializer, Serialize};
use time::{Date, Duration, OffsetDateTime};
use utoipa::{IntoParams, ToSchema};

use super::json;
use crate::auth::{Caller, ReadScope};
use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery};
use crate::openapi::LookupProblems;
use crate::state::AppState;

/// The longest range one request may ask for, in days, both ends included: `to` is at most
/// 365 days after `from`.
const MAX_DAYS: i64 = 366;
/// The range when none is given: the last 31 days, today included.
const DEFAULT_DAYS: i64 = 31;

/// The Julian day of 1970-01-01: the projection counts days from the Unix epoch.
const UNIX_EPOCH_JULIAN_DAY: i32 = 2_440_588;

/// A calendar date, `YYYY-MM-DD`.
#[derive(Debug, Clone, Copy)]
pub struct Day(Date);

impl<'de> Deserialize<'de> for Day {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        let invalid = || serde::de::Error::custom("must be a date, YYYY-MM-DD");
        // `format: date` (RFC 3339 full-date): four digits of year, no sign, so 0000 to 9999.
        let shaped = raw.len() == 10
            && raw
                .bytes()
                .enumerate()
                .all(|(i, b)| if i == 4 || i == 7 { b == b'-' } else { b.is_ascii_digit() });
        if !shaped {
            return Err(invalid());
        }
        let format = time::macros::format_description!("[year]-[month]-[day]");
        Date::parse(&raw, format).map(Day).map_err(|_| invalid())
    }
}

fn epoch_day(date: Date) -> i32 {
    date.to_julian_day() - UNIX_EPOCH_JULIAN_DAY
}

/// The first day a `format: date` can write, 0000-01-01; a default `from` never goes before it.
fn first_day() -> Date {
    Date::from_calendar_date(0, time::Month::January, 1).unwrap_or(Date::MIN)
}

fn date_of(epoch_day: i32) -> String {
    Date::from_julian_day(epoch_day + UNIX_EPOCH_JULIAN_DAY).map(|d| d.to_string()).unwrap_or_default()
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    /// First day (UTC), `YYYY-MM-DD`; default 30 days before `to` (but not before 0000-01-01).
    #[param(value_type = Option<String>, format = Date)]
    pub from: Option<Day>,
    /// Last day (UTC), inclusive; default today. Not before `from`, and at most 365 days after
    /// it (a range of at most 366 days, both ends included); else a 400.
    #[param(value_type = Option<String>, format = Date)]
    pub to: Option<Day>,
}

/// One day and transfer code.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsRow {
    /// The day (UTC) the transfers were made.
    #[schema(format = Date)]
    pub date: String,
    /// The transfers' `code`.
    pub code: u16,
    /// Posted transfers.
    pub count: u64,
    /// Their amounts' sum in minor units, as a decimal string (it may pass 2^64).
    pub volume: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LedgerStats {
    pub ledger: String,
    #[schema(format = Date)]
    pub from: String,
    #[schema(format = Date)]
    pub to: String,
    /// By day, then code; days without transfers are left out.
    pub data: Vec<StatsRow>,
}

/// Posted volume and count of a ledger per day and transfer code.
///
/// Counts transfers created posted — direct transfers and the posts of holds — on the day they
/// were made. Kept by an event consumer, so it follows the writes within moments.
#[utoipa::path(
    get, path = "/v1/ledgers/{code}/stats", tag = "ledgers",
    params(("code" = String, Path, description = "The ledger's code"), StatsQuery),
    responses((status = 200, description = "The ledger's volumes", body = LedgerStats), LookupProblems)
)]
pub async fn ledger_stats(
    State(state): State<AppState>,
    _: Caller<ReadScope>,
    ApiPath(code): ApiPath<LedgerCode>,
    ApiQuery(query): ApiQuery<StatsQuery>,
) -> Result<Response, ApiError> {
    let to = query.to.map_or_else(|| OffsetDateTime::now_utc().date(), |d| d.0);
    // Clamped rather than refused: the request is valid, and no transfer is older than 1970.
    let default_from = || to.saturating_sub(Duration::days(DEFAULT_DAYS - 1)).max(first_day());
    let from = query.from.map_or_else(default_from, |d| d.0);
    if from > to {
        return Err(ApiError::invalid_field("from", "must not be after `to`"));
    }
    if (to - from).whole_days() >= MAX_DAYS {
        return Err(ApiError::invalid_field("to", "must be at most 365 days after `from` (366 days in all)"));
    }
    state.store.ledger(code).await?.ok_or_else(|| ApiError::not_found("no such ledger"))?;
    let rows = state.store.ledger_volumes(&code, epoch_day(from), epoch_day(to)).await?;
    let data = rows
        .into_iter()
        .map(|row| StatsRow {
            date: date_of(row.day),
            code: row.code,
            count: row.count,
            volume: row.volume.to_string(),
        })
        .collect();
    let stats =
        LedgerStats { ledger: code.as_str().to_owned(), from: from.to_string(), to: to.to_string(), data };
    Ok(json(StatusCode::OK, &stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_days_match_the_events_day_numbers() {
        let date = Date::from_calendar_date(1970, time::Month::January, 1).unwrap();
        assert_eq!(epoch_day(date), 0);
        let date = Date::from_calendar_date(2026, time::Month::November, 30).unwrap();
        let micros = OffsetDateTime::new_utc(date, time::Time::MIDNIGHT).unix_timestamp() * 1_000_000;
        assert_eq!(epoch_day(date), coffer_events::day_of(coffer_ledger::Timestamp::from_micros(micros)));
        assert_eq!(date_of(epoch_day(date)), "2026-11-30");
    }
}
