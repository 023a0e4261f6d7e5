//! Value types with their validation: money, contacts, reason codes, size
//! bands, text limits.
//!
//! Limits (documented in README.md's "Limits" table):
//!
//! | what | limit |
//! |---|---|
//! | short text (names, company, engagement name, industry) | 1–200 characters |
//! | long text (notes, requirements) | 1–4,000 characters |
//! | profile description | up to 2,500 characters |
//! | CRM id, campaign id | up to 100 characters |
//! | tags (products, services, keywords, expertise) | up to 50 per list, each 1–100 characters |
//! | contacts on a referral | up to 20 |
//! | locations per region profile | 1–5, each with up to 10 contacts |

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Violations;

pub const MAX_SHORT_TEXT: usize = 200;
pub const MAX_LONG_TEXT: usize = 4_000;
pub const MAX_DESCRIPTION: usize = 2_500;
pub const MAX_REFERENCE: usize = 100;
pub const MAX_TAGS: usize = 50;
pub const MAX_TAG_LEN: usize = 100;
pub const MAX_REFERRAL_CONTACTS: usize = 20;
pub const MAX_LOCATIONS: usize = 5;
pub const MAX_LOCATION_CONTACTS: usize = 10;

/// Checks a required text: trimmed, non-empty, at most `max` characters.
pub fn required_text(text: &str, max: usize) -> Result<String, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("is required".into());
    }
    optional_text(trimmed, max).map(|t| t.unwrap_or_default())
}

/// Checks an optional text: empty means absent; otherwise at most `max` characters.
pub fn optional_text(text: &str, max: usize) -> Result<Option<String>, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Ok(None);
    }
    let len = trimmed.chars().count();
    if len > max {
        return Err(format!("is {len} characters long; at most {max} are allowed"));
    }
    if trimmed.chars().any(|c| c.is_control() && c != '\n' && c != '\r' && c != '\t') {
        return Err("contains a control character".into());
    }
    Ok(Some(trimmed.to_string()))
}

/// Checks a list of tags: at most [`MAX_TAGS`], each 1–[`MAX_TAG_LEN`]
/// characters, duplicates (ignoring case) removed, order kept.
pub fn tags(list: &[String]) -> Result<Vec<String>, String> {
    if list.len() > MAX_TAGS {
        return Err(format!("has {} entries; at most {MAX_TAGS} are allowed", list.len()));
    }
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for (i, tag) in list.iter().enumerate() {
        let tag = required_text(tag, MAX_TAG_LEN).map_err(|e| format!("entry {i} {e}"))?;
        if !out.iter().any(|t| t.eq_ignore_ascii_case(&tag)) {
            out.push(tag);
        }
    }
    Ok(out)
}

/// An ISO 4217 currency code with its number of minor-unit digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency {
    code: [u8; 3],
    exponent: u8,
}

/// Active ISO 4217 codes whose minor unit is not 2 digits.
const EXPONENT_0: &[&str] = &[
    "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND", "VUV", "XAF", "XOF",
    "XPF",
];
const EXPONENT_3: &[&str] = &["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"];
const EXPONENT_4: &[&str] = &["CLF", "UYW"];
/// Active ISO 4217 codes with 2 minor-unit digits.
const EXPONENT_2: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT", "BGN", "BMD", "BND",
    "BOB", "BOV", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD", "CDF", "CHE", "CHF", "CHW", "CNY", "COP", "COU",
    "CRC", "CUC", "CUP", "CVE", "CZK", "DKK", "DOP", "DZD", "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL",
    "GHS", "GIP", "GMD", "GTQ", "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IRR", "JMD", "KES", "KGS",
    "KHR", "KPW", "KYD", "KZT", "LAK", "LBP", "LKR", "LRD", "LSL", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP",
    "MRU", "MUR", "MVR", "MWK", "MXN", "MXV", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "PAB", "PEN",
    "PGK", "PHP", "PKR", "PLN", "QAR", "RON", "RSD", "RUB", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE",
    "SLL", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB", "TJS", "TMT", "TOP", "TRY", "TTD", "TWD", "TZS",
    "UAH", "USD", "USN", "UYU", "UZS", "VED", "VES", "WST", "XCD", "XCG", "YER", "ZAR", "ZMW", "ZWG", "ZWL",
];

impl Currency {
    /// Looks up an ISO 4217 code (upper case, e.g. `EUR`).
    pub fn parse(code: &str) -> Result<Currency, String> {
        let exponent = if EXPONENT_2.contains(&code) {
            2
        } else if EXPONENT_0.contains(&code) {
            0
        } else if EXPONENT_3.contains(&code) {
            3
        } else if EXPONENT_4.contains(&code) {
            4
        } else if code.is_empty() {
            return Err("currency code is required (ISO 4217, e.g. EUR)".into());
        } else {
            return Err(format!("{code:?} is not an ISO 4217 currency code (e.g. EUR, USD, JPY)"));
        };
        let b = code.as_bytes();
        Ok(Currency { code: [b[0], b[1], b[2]], exponent })
    }

    pub fn code(&self) -> &str {
        std::str::from_utf8(&self.code).expect("currency codes are ASCII")
    }

    /// Digits after the decimal point (2 for EUR, 0 for JPY, 3 for KWD).
    pub fn exponent(&self) -> u8 {
        self.exponent
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// An amount of money: an integer number of the currency's minor units (cents
/// for EUR, yen for JPY). No floating point anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Money {
    pub currency: Currency,
    pub minor_units: i64,
}

impl Money {
    fn scale(currency: Currency) -> i64 {
        10i64.pow(u32::from(currency.exponent))
    }

    /// From `google.type.Money` parts: whole units and nano (10^-9) units.
    /// Refuses fractions finer than the currency's minor unit.
    pub fn from_units_nanos(currency_code: &str, units: i64, nanos: i32) -> Result<Money, String> {
        let currency = Currency::parse(currency_code)?;
        if !(-999_999_999..=999_999_999).contains(&nanos) {
            return Err("nanos must be between -999,999,999 and 999,999,999".into());
        }
        if (units > 0 && nanos < 0) || (units < 0 && nanos > 0) {
            return Err("units and nanos must have the same sign".into());
        }
        let nanos_per_minor = 1_000_000_000i64 / Money::scale(currency);
        if i64::from(nanos) % nanos_per_minor != 0 {
            return Err(format!("has more decimal places than {} allows ({})", currency.code(), currency.exponent));
        }
        let minor = units
            .checked_mul(Money::scale(currency))
            .and_then(|m| m.checked_add(i64::from(nanos) / nanos_per_minor))
            .ok_or_else(|| "amount is too large".to_string())?;
        Ok(Money { currency, minor_units: minor })
    }

    /// Parses a decimal amount such as `12500`, `12500.5` or `12500.50`.
    pub fn parse_decimal(currency_code: &str, amount: &str) -> Result<Money, String> {
        let currency = Currency::parse(currency_code)?;
        let amount = amount.trim();
        let (negative, digits) = match amount.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, amount),
        };
        let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
        let is_digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
        if whole.is_empty() || !is_digits(whole) || !is_digits(frac) {
            return Err(format!("{amount:?} is not a decimal amount (e.g. 12500.50)"));
        }
        if frac.len() > usize::from(currency.exponent) {
            return Err(format!(
                "{amount:?} has more decimal places than {} allows ({})",
                currency.code(),
                currency.exponent
            ));
        }
        let padded = format!("{frac:0<width$}", width = usize::from(currency.exponent));
        let whole: i64 = whole.parse().map_err(|_| "amount is too large".to_string())?;
        let frac: i64 = if padded.is_empty() { 0 } else { padded.parse().map_err(|_| "bad fraction".to_string())? };
        let minor = whole
            .checked_mul(Money::scale(currency))
            .and_then(|m| m.checked_add(frac))
            .ok_or_else(|| "amount is too large".to_string())?;
        Ok(Money { currency, minor_units: if negative { -minor } else { minor } })
    }

    /// Whole units (for `google.type.Money.units`).
    pub fn units(&self) -> i64 {
        self.minor_units / Money::scale(self.currency)
    }

    /// Nano units (for `google.type.Money.nanos`).
    pub fn nanos(&self) -> i32 {
        let rest = self.minor_units % Money::scale(self.currency);
        let nanos = rest * (1_000_000_000 / Money::scale(self.currency));
        i32::try_from(nanos).expect("a remainder below one unit fits in nanos")
    }

    pub fn is_positive(&self) -> bool {
        self.minor_units > 0
    }

    /// The amount as a decimal string, e.g. `12500.50`.
    pub fn amount_string(&self) -> String {
        let scale = Money::scale(self.currency);
        let sign = if self.minor_units < 0 { "-" } else { "" };
        let abs = self.minor_units.unsigned_abs();
        let whole = abs / scale.unsigned_abs();
        if self.currency.exponent == 0 {
            format!("{sign}{whole}")
        } else {
            let frac = abs % scale.unsigned_abs();
            format!("{sign}{whole}.{frac:0width$}", width = usize::from(self.currency.exponent))
        }
    }
}

/// A positive amount, as an estimated or final deal value must be.
pub fn positive_money(money: Money) -> Result<Money, String> {
    if money.is_positive() {
        Ok(money)
    } else {
        Err(format!("must be greater than zero (got {money})"))
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.amount_string(), self.currency)
    }
}

#[derive(Serialize, Deserialize)]
struct MoneyJson {
    currency: String,
    amount: String,
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        MoneyJson { currency: self.currency.code().to_string(), amount: self.amount_string() }.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let json = MoneyJson::deserialize(deserializer)?;
        Money::parse_decimal(&json.currency, &json.amount).map_err(serde::de::Error::custom)
    }
}

/// Checks an e-mail address: `local@domain.tld`, at most 254 characters.
pub fn email(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("is required".into());
    }
    if text.len() > 254 {
        return Err("is longer than 254 characters".into());
    }
    let bad = || format!("{text:?} is not an e-mail address (name@example.com)");
    let (local, domain) = text.split_once('@').ok_or_else(bad)?;
    if local.is_empty()
        || local.len() > 64
        || domain.contains('@')
        || local.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(bad());
    }
    let labels: Vec<&str> = domain.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if labels.len() < 2 || !labels.iter().all(label_ok) {
        return Err(bad());
    }
    Ok(text.to_string())
}

/// Checks a phone number: an optional leading `+`, then 7–15 digits, with
/// spaces, dots, hyphens and parentheses allowed between them.
pub fn phone(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("is required".into());
    }
    let body = text.strip_prefix('+').unwrap_or(text);
    if let Some(bad) = body.chars().find(|c| !(c.is_ascii_digit() || matches!(c, ' ' | '-' | '.' | '(' | ')'))) {
        return Err(format!("{text:?} is not a phone number ({bad:?} is not allowed; e.g. +49 30 1234567)"));
    }
    let digits = body.chars().filter(char::is_ascii_digit).count();
    if !(7..=15).contains(&digits) {
        return Err(format!("{text:?} has {digits} digits; a phone number has 7 to 15"));
    }
    Ok(text.to_string())
}

/// Why a referral was declined or lost (the vendor's bulk-update codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasonCode {
    BudgetNotAdequate,
    CustomerDidNotRespond,
    CustomerChoseAnotherVendor,
    CustomerRequirementNotMet,
    NotARealCustomer,
    TimelineTooShort,
    AbuseSpamPhishing,
    Other,
}

impl ReasonCode {
    pub const ALL: [ReasonCode; 8] = [
        ReasonCode::BudgetNotAdequate,
        ReasonCode::CustomerDidNotRespond,
        ReasonCode::CustomerChoseAnotherVendor,
        ReasonCode::CustomerRequirementNotMet,
        ReasonCode::NotARealCustomer,
        ReasonCode::TimelineTooShort,
        ReasonCode::AbuseSpamPhishing,
        ReasonCode::Other,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            ReasonCode::BudgetNotAdequate => "budget_not_adequate",
            ReasonCode::CustomerDidNotRespond => "customer_did_not_respond",
            ReasonCode::CustomerChoseAnotherVendor => "customer_chose_another_vendor",
            ReasonCode::CustomerRequirementNotMet => "customer_requirement_not_met",
            ReasonCode::NotARealCustomer => "not_a_real_customer",
            ReasonCode::TimelineTooShort => "timeline_too_short",
            ReasonCode::AbuseSpamPhishing => "abuse_spam_phishing",
            ReasonCode::Other => "other",
        }
    }

    pub fn parse(text: &str) -> Result<ReasonCode, String> {
        ReasonCode::ALL.into_iter().find(|r| r.as_str() == text).ok_or_else(|| {
            let known: Vec<&str> = ReasonCode::ALL.iter().map(ReasonCode::as_str).collect();
            format!("{text:?} is not a reason code; use one of {}", known.join(", "))
        })
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reason with its notes: notes are required when the reason is `other`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    pub code: ReasonCode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
}

impl Reason {
    /// Validates a reason, recording problems under `reason` and `notes`.
    pub fn validate(code: Option<ReasonCode>, notes: &str, v: &mut Violations) -> Option<Reason> {
        let notes = v.check("notes", optional_text(notes, MAX_LONG_TEXT))?;
        let Some(code) = code else {
            v.add("reason", "is required");
            return None;
        };
        if code == ReasonCode::Other && notes.is_none() {
            v.add("notes", "are required when the reason is \"other\"");
            return None;
        }
        Some(Reason { code, notes })
    }
}

/// Customer company size, in employees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SizeBand {
    #[serde(rename = "1-9")]
    S1To9,
    #[serde(rename = "10-50")]
    S10To50,
    #[serde(rename = "51-250")]
    S51To250,
    #[serde(rename = "251-1000")]
    S251To1000,
    #[serde(rename = "1001-5000")]
    S1001To5000,
    #[serde(rename = "5001-10000")]
    S5001To10000,
    #[serde(rename = "10001-20000")]
    S10001To20000,
    #[serde(rename = "20000+")]
    Over20000,
}

impl SizeBand {
    pub const ALL: [SizeBand; 8] = [
        SizeBand::S1To9,
        SizeBand::S10To50,
        SizeBand::S51To250,
        SizeBand::S251To1000,
        SizeBand::S1001To5000,
        SizeBand::S5001To10000,
        SizeBand::S10001To20000,
        SizeBand::Over20000,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            SizeBand::S1To9 => "1-9",
            SizeBand::S10To50 => "10-50",
            SizeBand::S51To250 => "51-250",
            SizeBand::S251To1000 => "251-1000",
            SizeBand::S1001To5000 => "1001-5000",
            SizeBand::S5001To10000 => "5001-10000",
            SizeBand::S10001To20000 => "10001-20000",
            SizeBand::Over20000 => "20000+",
        }
    }

    pub fn parse(text: &str) -> Result<SizeBand, String> {
        SizeBand::ALL.into_iter().find(|s| s.as_str() == text).ok_or_else(|| {
            let known: Vec<&str> = SizeBand::ALL.iter().map(SizeBand::as_str).collect();
            format!("{text:?} is not a size band; use one of {}", known.join(", "))
        })
    }
}

impl fmt::Display for SizeBand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A person: on the partner's team (referral contacts, profile contacts) or
/// the customer's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    pub name: String,
    pub email: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
}

/// A contact as given, before validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContactInput {
    pub name: String,
    pub email: String,
    pub phone: String,
}

impl ContactInput {
    pub fn new(name: &str, email: &str, phone: &str) -> Self {
        ContactInput { name: name.into(), email: email.into(), phone: phone.into() }
    }

    /// Validates name (required), e-mail (required) and phone (optional unless
    /// `phone_required`).
    pub fn validate(&self, phone_required: bool, v: &mut Violations) -> Option<Contact> {
        let name = v.check("name", required_text(&self.name, MAX_SHORT_TEXT));
        let email = v.check("email", email(&self.email));
        let phone = if self.phone.trim().is_empty() && !phone_required {
            Some(None)
        } else {
            v.check("phone", phone(&self.phone)).map(Some)
        };
        Some(Contact { name: name?, email: email?, phone: phone? })
    }
}

/// Validates a list of contacts, recording problems under `field[i].`.
pub fn contacts(
    field: &str,
    list: &[ContactInput],
    phone_required: bool,
    max: usize,
    v: &mut Violations,
) -> Vec<Contact> {
    if list.len() > max {
        v.add(field, format!("has {} contacts; at most {max} are allowed", list.len()));
    }
    let mut out: Vec<Contact> = Vec::new();
    for (i, input) in list.iter().enumerate() {
        let mut inner = Violations::new();
        if let Some(contact) = input.validate(phone_required, &mut inner) {
            if out.iter().any(|c| c.email.eq_ignore_ascii_case(&contact.email)) {
                inner.add("email", format!("{} appears twice", contact.email));
            } else {
                out.push(contact);
            }
        }
        v.extend_prefixed(&format!("{field}[{i}]."), inner);
    }
    out
}
