# Source of tests/data/pii_labelled.jsonl (run from the repository root to regenerate it): hand-written
# support-style sentences; each entry lists the PII it holds (type, exact text). Hard negatives at the end.
import json
E = []
def add(text, *pii):
    for t, v in pii:
        assert v in text, (v, text)
    E.append({"text": text, "pii": [list(p) for p in pii]})

# EMAIL
add("Please send the invoice to john.smith@example.com today.", ("EMAIL", "john.smith@example.com"))
add("contact: support+billing@shop.co.uk", ("EMAIL", "support+billing@shop.co.uk"))
add("My work address is a.b-c_d@sub.domain-name.org, not the gmail one.", ("EMAIL", "a.b-c_d@sub.domain-name.org"))
add("Email me at JaneDoe1984@Yahoo.com or jane@doe.io", ("EMAIL", "JaneDoe1984@Yahoo.com"), ("EMAIL", "jane@doe.io"))
add("(maria.garcia@empresa.es)", ("EMAIL", "maria.garcia@empresa.es"))
add("I changed my email to tom_h@outlook.de last week", ("EMAIL", "tom_h@outlook.de"))
add("reply-to:<noreply@accounts.bank.com>", ("EMAIL", "noreply@accounts.bank.com"))
add("Her address, li.wei@university.edu.cn, bounced.", ("EMAIL", "li.wei@university.edu.cn"))
add("Send it to x@y.co", ("EMAIL", "x@y.co"))
add("EMAIL: PETER.PAN@NEVERLAND.COM", ("EMAIL", "PETER.PAN@NEVERLAND.COM"))
add("cc kelly.obrien@mail.ie and first.last@company.travel", ("EMAIL", "first.last@company.travel"), ("EMAIL", "kelly.obrien@mail.ie"))
add("My paypal is pay.me.now@paypal-mail.net", ("EMAIL", "pay.me.now@paypal-mail.net"))
add("user123@test-server.example.org wrote:", ("EMAIL", "user123@test-server.example.org"))
add("The new login is anna.k@firma.at since Monday.", ("EMAIL", "anna.k@firma.at"))
add("ping me: dev.ops@startup.ai", ("EMAIL", "dev.ops@startup.ai"))
add("Forwarded from r.jones@nhs.net to hr@acme.com", ("EMAIL", "r.jones@nhs.net"), ("EMAIL", "hr@acme.com"))
add("email address on file: sam%test@relay.example.com", ("EMAIL", "sam%test@relay.example.com"))
add("I can't access bob.builder@construction.biz anymore", ("EMAIL", "bob.builder@construction.biz"))
add("Use ops@example.museum for escalations.", ("EMAIL", "ops@example.museum"))
add("His gmail: kevin.o.1999@gmail.com!", ("EMAIL", "kevin.o.1999@gmail.com"))

# PHONE
add("Call me on +44 20 7946 0958 after 5pm.", ("PHONE", "+44 20 7946 0958"))
add("My number is (415) 555-0132.", ("PHONE", "(415) 555-0132"))
add("phone: 415-555-0199", ("PHONE", "415-555-0199"))
add("You can reach me at 415.555.0173 anytime", ("PHONE", "415.555.0173"))
add("Ring +1-202-555-0147 for the front desk", ("PHONE", "+1-202-555-0147"))
add("Mobile 07700 900123, landline 0161 496 0000", ("PHONE", "07700 900123"), ("PHONE", "0161 496 0000"))
add("Tel. +49 30 901820", ("PHONE", "+49 30 901820"))
add("Please text me at 5551234567 when it arrives", ("PHONE", "5551234567"))
add("Appelez le +33 1 42 68 53 00 svp", ("PHONE", "+33 1 42 68 53 00"))
add("my cell is +919876543210", ("PHONE", "+919876543210"))
add("WhatsApp: +34 612 345 678", ("PHONE", "+34 612 345 678"))
add("Fax 212-555-0100 or call 212 555 0111.", ("PHONE", "212-555-0100"), ("PHONE", "212 555 0111"))
add("Our office (02) 9876 5432 is closed on Sundays.", ("PHONE", "(02) 9876 5432"))
add("Reach the branch on 1300 655 506.", ("PHONE", "1300 655 506"))
add("The agent gave me +81 3-1234-5678 as a callback number.", ("PHONE", "+81 3-1234-5678"))
add("call 020 7946 0321 and ask for Sam", ("PHONE", "020 7946 0321"))
add("Number changed to 646.555.0193 yesterday", ("PHONE", "646.555.0193"))
add("My phone number is 0412 345 678.", ("PHONE", "0412 345 678"))
add("telephone +353 1 555 0140", ("PHONE", "+353 1 555 0140"))
add("If urgent: 1-800-555-0175", ("PHONE", "1-800-555-0175"))

# CARD
add("My card number is 4111 1111 1111 1111 and it was declined.", ("CARD", "4111 1111 1111 1111"))
add("charged to 5500-0000-0000-0004 twice", ("CARD", "5500-0000-0000-0004"))
add("Amex 3782 822463 10005 expired", ("CARD", "3782 822463 10005"))
add("card: 6011000000000004", ("CARD", "6011000000000004"))
add("Use 4012888888881881 for the test payment.", ("CARD", "4012888888881881"))
add("The Mastercard 5105 1051 0510 5100 is blocked", ("CARD", "5105 1051 0510 5100"))
add("I paid with 371449635398431.", ("CARD", "371449635398431"))
add("Discover 6011 1111 1111 1117 shows a pending charge", ("CARD", "6011 1111 1111 1117"))
add("JCB card 3530111333300000 not accepted abroad", ("CARD", "3530111333300000"))
add("Visa 4222222222222 (old 13-digit)", ("CARD", "4222222222222"))
add("cancel card 4000 0566 5566 5556 please", ("CARD", "4000 0566 5566 5556"))
add("new card 5200828282828210 arrived", ("CARD", "5200828282828210"))
add("replace 4242-4242-4242-4242, it's damaged", ("CARD", "4242-4242-4242-4242"))
add("My debit card (4000 0025 0000 3155) was swallowed by the ATM", ("CARD", "4000 0025 0000 3155"))
add("Card ending... full number 5555 5555 5555 4444", ("CARD", "5555 5555 5555 4444"))
add("two cards: 4111111111111111 and 5555555555554444", ("CARD", "4111111111111111"), ("CARD", "5555555555554444"))
add("Diners 3056 9309 0259 04 works", ("CARD", "3056 9309 0259 04"))
add("Maestro 6759649826438453 declined in shop", ("CARD", "6759649826438453"))
add("UnionPay 6200000000000005 please refund", ("CARD", "6200000000000005"))

# IBAN
add("My IBAN is GB82 WEST 1234 5698 7654 32.", ("IBAN", "GB82 WEST 1234 5698 7654 32"))
add("Transfer to DE89370400440532013000 please", ("IBAN", "DE89370400440532013000"))
add("IBAN: FR14 2004 1010 0505 0001 3M02 606", ("IBAN", "FR14 2004 1010 0505 0001 3M02 606"))
add("send the money to NL91ABNA0417164300", ("IBAN", "NL91ABNA0417164300"))
add("Spanish account ES91 2100 0418 4502 0005 1332 for the rent", ("IBAN", "ES91 2100 0418 4502 0005 1332"))
add("IT60X0542811101000000123456 is my Italian account", ("IBAN", "IT60X0542811101000000123456"))
add("Belgian IBAN BE68 5390 0754 7034", ("IBAN", "BE68 5390 0754 7034"))
add("CH93 0076 2011 6238 5295 7 (Swiss)", ("IBAN", "CH93 0076 2011 6238 5295 7"))
add("Austria: AT61 1904 3002 3457 3201", ("IBAN", "AT61 1904 3002 3457 3201"))
add("pay PL61109010140000071219812874 by Friday", ("IBAN", "PL61109010140000071219812874"))
add("SE45 5000 0000 0583 9825 7466 is the Swedish one", ("IBAN", "SE45 5000 0000 0583 9825 7466"))
add("Danish account DK50 0040 0440 1162 43", ("IBAN", "DK50 0040 0440 1162 43"))
add("Norway NO93 8601 1117 947 received nothing", ("IBAN", "NO93 8601 1117 947"))
add("FI21 1234 5600 0007 85 is my Finnish account", ("IBAN", "FI21 1234 5600 0007 85"))
add("Irish IBAN IE29AIBK93115212345678", ("IBAN", "IE29AIBK93115212345678"))
add("PT50 0002 0123 1234 5678 9015 4 please check", ("IBAN", "PT50 0002 0123 1234 5678 9015 4"))
add("Wire to GB29NWBK60161331926819 today", ("IBAN", "GB29NWBK60161331926819"))
add("Luxembourg LU28 0019 4006 4475 0000", ("IBAN", "LU28 0019 4006 4475 0000"))
add("my old IBAN was DE75512108001245126199", ("IBAN", "DE75512108001245126199"))
add("Greek account GR16 0110 1250 0000 0001 2300 695", ("IBAN", "GR16 0110 1250 0000 0001 2300 695"))

# SSN
add("My SSN is 123-45-6789.", ("SSN", "123-45-6789"))
add("social security number 078-05-1120 was on the form", ("SSN", "078-05-1120"))
add("SSN: 219-09-9999", ("SSN", "219-09-9999"))
add("ssn 457 55 5462 for the tax form", ("SSN", "457 55 5462"))
add("Social Security No. 536-22-1234, DOB 1990", ("SSN", "536-22-1234"))
add("The applicant (SSN 321-54-9876) called", ("SSN", "321-54-9876"))
add("id 001-01-0001 on the W-2", ("SSN", "001-01-0001"))
add("my social security is 612-34-5670", ("SSN", "612-34-5670"))
add("SSN#: 555-12-3456", ("SSN", "555-12-3456"))
add("Please update SSN to 234-56-7891 in my profile", ("SSN", "234-56-7891"))
add("his social security number is 345678912", ("SSN", "345678912"))
add("SSN 401-22-3344 and spouse 402-33-4455", ("SSN", "401-22-3344"), ("SSN", "402-33-4455"))
add("I typed 521-87-6543 into the SSN field", ("SSN", "521-87-6543"))
add("SSN:111-22-3333", ("SSN", "111-22-3333"))
add("tax id (SSN) 777-88-9999 rejected", ("SSN", "777-88-9999"))
add("ssn is 233-44-5566", ("SSN", "233-44-5566"))
add("Member SSN 600-70-8000 on file", ("SSN", "600-70-8000"))
add("Verify 145-67-8901 matches the SSN card", ("SSN", "145-67-8901"))
add("social security 876-54-3210", ("SSN", "876-54-3210"))
add("Employee SSNs: 301-11-2222.", ("SSN", "301-11-2222"))

# IP
add("The login came from 192.168.1.24 at night.", ("IP", "192.168.1.24"))
add("server ip: 10.0.0.1", ("IP", "10.0.0.1"))
add("blocked 203.0.113.195 and 198.51.100.7", ("IP", "203.0.113.195"), ("IP", "198.51.100.7"))
add("IPv6 2001:db8:85a3::8a2e:370:7334 is ours", ("IP", "2001:db8:85a3::8a2e:370:7334"))
add("connect to fe80::1ff:fe23:4567:890a", ("IP", "fe80::1ff:fe23:4567:890a"))
add("(172.16.254.1)", ("IP", "172.16.254.1"))
add("The VPN gave me 100.64.12.9.", ("IP", "100.64.12.9"))
add("dns 8.8.8.8, 1.1.1.1", ("IP", "8.8.8.8"), ("IP", "1.1.1.1"))
add("address 2001:0db8:0000:0000:0000:ff00:0042:8329 logged", ("IP", "2001:0db8:0000:0000:0000:ff00:0042:8329"))
add("loopback ::1 only", ("IP", "::1"))
add("my router is at 192.168.0.254", ("IP", "192.168.0.254"))
add("Suspicious access from 45.33.32.156 flagged", ("IP", "45.33.32.156"))
add("client=10.1.2.3;port=443", ("IP", "10.1.2.3"))
add("2607:f8b0:4005:805::200e answered", ("IP", "2607:f8b0:4005:805::200e"))
add("from 127.0.0.1 to 255.255.255.0", ("IP", "127.0.0.1"), ("IP", "255.255.255.0"))
add("Whitelist 52.14.88.201 please", ("IP", "52.14.88.201"))
add("my public IP is 81.2.69.160", ("IP", "81.2.69.160"))
add("logged IP 2a00:1450:4001:82b::200e", ("IP", "2a00:1450:4001:82b::200e"))

# CREDENTIAL
add("my api key is sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv", ("CREDENTIAL", "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv"))
add("token ghp_16C7e42F292c6912E7710c838347Ae178B4a works", ("CREDENTIAL", "ghp_16C7e42F292c6912E7710c838347Ae178B4a"))
add("AWS key AKIAIOSFODNN7EXAMPLE leaked", ("CREDENTIAL", "AKIAIOSFODNN7EXAMPLE"))
add("password: Tr0ub4dor&3", ("CREDENTIAL", "Tr0ub4dor&3"))
add("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U", ("CREDENTIAL", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"))
add("my password is hunter22", ("CREDENTIAL", "hunter22"))
add("api_key=AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI", ("CREDENTIAL", "AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI"))
add("slack token xoxb-123456789012-abcdefGHIJKL", ("CREDENTIAL", "xoxb-123456789012-abcdefGHIJKL"))
add("HF token hf_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789", ("CREDENTIAL", "hf_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789"))
add("secret = 9f8e7d6c5b4a", ("CREDENTIAL", "9f8e7d6c5b4a"))

# NAME
add("Hi, my name is Sarah Connor and I need help.", ("NAME", "Sarah Connor"))
add("Dear Mr. Thompson, your card is ready.", ("NAME", "Thompson"))
add("This is Priya Patel from accounts.", ("NAME", "Priya Patel"))
add("Kind regards, Oliver", ("NAME", "Oliver"))
add("Please ask Dr. Alvarez to call back.", ("NAME", "Alvarez"))

# Hard negatives: no PII in these
for text in [
    "My order 12345678 has not arrived.", "I paid $1,234.56 on 2024-01-15 at 10:30.",
    "The transfer of 250.00 EUR took 3 days.", "Version 1.2.3 of the app crashes.",
    "Tracking number 1Z999AA10123456784 shows no update.", "Call me back please, I'm worried.",
    "My password is not working.", "The token expired yesterday.", "Reset my PIN immediately.",
    "I was charged 3 times: 12.99, 12.99 and 12.99.", "Reference 2023/11/05-7781 in the statement.",
    "Balance: 1 000 000 pounds?", "It happened on 12.05.2024 around 14:45:10.",
    "Account ending in 4821 was charged.", "My card expires 09/27.", "The fee is 0.5% up to 1.000 EUR.",
    "Order #A1B2C3D4E5 was cancelled.", "Ticket ID 20240115-0042 is still open.",
    "Dear Sir or Madam, I would like a refund.", "This is urgent, please help.",
    "I live at 221B Baker Street.", "The exchange rate was 1.0876 today.", "I need 2 cards for 4 people.",
    "Between 9:00 and 17:30 on weekdays.", "My account number (last 4) is 9876.",
    "The ATM at 5th Avenue ate my card.", "Postcode SW1A 1AA", "The invoice total 4,350.00 USD",
    "ISBN 978-3-16-148410-0 book refund", "Transaction 8d3f9a1c-2b4e-4c6a-9f0e-1a2b3c4d5e6f failed",
    "I got error code 0x80070005.", "The meeting is at 10:30:00 UTC", "Package weighs 2.5 kg",
    "Call center hours are 8 to 8.", "I want to change my name on the account.",
    "Is the password reset link valid for 24 hours?", "Please send the API key documentation.",
    "The token limit is 4096.", "I transferred 1500 to my savings yesterday.",
    "Card 4111 1111 1111 1112 is not a valid number.", "000-12-3456 is not an SSN.",
    "The IP rating of the phone is IP68.", "Room 101, floor 3.", "My PIN has 4 digits.",
]:
    add(text)

with open("tests/data/pii_labelled.jsonl", "w") as f:
    for e in E:
        f.write(json.dumps(e, ensure_ascii=False) + "\n")
print(len(E))
