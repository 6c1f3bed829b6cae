"""The fact table of Brightcart, the fictional online store behind the quickstart's bundled data.

Every fact is something a base model cannot know (a made-up return window, fee, product price), so
the improvement from fine-tuning is measurable. Each :class:`Fact` carries:

* ``facts``: short substrings that a correct answer must contain (checked case-insensitively);
* ``answers``: how the support team phrases the answer (every one contains every fact string);
* ``questions``: customer phrasings used for *training*;
* ``heldout``: *different* phrasings, used only for evaluation, so the held-out score measures
  whether the model learned the fact rather than the sentence;
* ``paraphrases``: more training phrasings in everyday words (``PARAPHRASES`` below), so that the
  model meets each fact under several vocabularies, as it would in a real support export.

``make_dataset.py`` turns this table into ``data/support_chats.jsonl`` and ``data/heldout.jsonl``.
Answers avoid e-mail addresses and phone numbers on purpose: ``data prepare`` redacts those, and a
fact that is redacted in training cannot be learned.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

STORE = "Brightcart"
SYSTEM_PROMPT = "You are the customer support assistant of Brightcart, an online store."


@dataclass(frozen=True)
class Fact:
    key: str
    facts: tuple[str, ...]
    answers: tuple[str, ...]
    questions: tuple[str, ...]
    heldout: tuple[str, ...]
    paraphrases: tuple[str, ...] = ()


POLICIES: tuple[Fact, ...] = (
    Fact("returns.window", ("45 days",),
         ("You can return any item within 45 days of delivery.",
          "Our return window is 45 days from the day your order arrives.",
          "Returns are accepted up to 45 days after delivery."),
         ("How long do I have to return something?", "What is your return window?",
          "How many days do I have to return an item?", "Can I still return an order I got last month?",
          "What's the deadline for returns?", "Is there a time limit on returns?",
          "How long is the return period?", "Until when can I send an item back?",
          "What is the return policy time frame?"),
         ("If I change my mind about a purchase, how much time do I get to bring it back?",
          "Returning stuff: how many days after delivery is still okay?")),
    Fact("returns.label_fee", ("$3.95",),
         ("Return shipping costs $3.95, which we deduct from your refund.",
          "A prepaid return label costs $3.95; it is taken off your refund.",
          "We charge $3.95 for the return label, deducted from the refund."),
         ("Do I have to pay for return shipping?", "How much does a return label cost?",
          "Is return shipping free?", "What does it cost to send an item back?",
          "Will you charge me for the return label?", "What is the fee for returning an order?",
          "Who pays the postage when I return something?", "How much is return shipping?"),
         ("If I ship a purchase back to you, what am I charged for postage?",)),
    Fact("refunds.time", ("8 business days",),
         ("Refunds reach your original payment method within 8 business days after we receive the return.",
          "Once your return arrives, the refund takes up to 8 business days.",
          "We issue refunds within 8 business days of receiving the item."),
         ("How long does a refund take?", "When will I get my money back?",
          "How fast are refunds processed?", "I returned my order, when is the refund coming?",
          "How many days until my refund shows up?", "What is the refund processing time?",
          "How long until I'm refunded?", "When do refunds arrive on my card?"),
         ("My parcel is back at your warehouse. How soon will the money land in my account?",
          "What's the waiting time for reimbursement after a return?")),
    Fact("shipping.standard_cost", ("$4.90",),
         ("Standard shipping costs $4.90 per order.",
          "We charge a flat $4.90 for standard shipping.",
          "Standard delivery is $4.90 per order."),
         ("How much is shipping?", "What does standard shipping cost?", "What are your shipping fees?",
          "How much do you charge for delivery?", "What's the shipping cost per order?",
          "Is there a delivery fee?", "How much will shipping be on my order?",
          "What is the price of standard delivery?", "Do you charge for shipping?"),
         ("What will it set me back to have a normal parcel sent to my home?",
          "Regular postage on an order: what's the charge?")),
    Fact("shipping.free_threshold", ("$60",),
         ("Shipping is free on orders over $60.",
          "Orders above $60 ship for free.",
          "Spend more than $60 and standard shipping is free."),
         ("Do you offer free shipping?", "When is shipping free?", "What's the minimum for free shipping?",
          "How much do I need to spend to get free delivery?", "Is there a free shipping threshold?",
          "Can I get free shipping?", "At what order amount is shipping free?",
          "Do big orders ship free?"),
         ("How big does my basket need to be before you waive the postage?",
          "Is there an order total that makes delivery cost nothing?")),
    Fact("shipping.standard_time", ("4 to 6 business days",),
         ("Standard delivery takes 4 to 6 business days.",
          "Standard orders arrive in 4 to 6 business days.",
          "With standard shipping, expect your parcel in 4 to 6 business days."),
         ("How long does delivery take?", "When will my order arrive?", "How fast is standard shipping?",
          "How many days does shipping take?", "What is the delivery time?",
          "How long until my package gets here?", "How quickly do you deliver?",
          "What's the usual shipping time?"),
         ("After I check out with the normal option, how many days before the box is at my door?",)),
    Fact("shipping.express", ("$12.50",),
         ("Express shipping costs $12.50 and arrives the next business day.",
          "Next-day express delivery is $12.50.",
          "Express shipping is $12.50 for next-business-day delivery."),
         ("Do you have express shipping?", "How much is express delivery?",
          "Can I get my order faster?", "What does next-day shipping cost?",
          "Is there a faster shipping option?", "How much for express shipping?",
          "What's the price of overnight delivery?"),
         ("I need it tomorrow. What does the quickest delivery option cost?",
          "What's the fee to rush my parcel?")),
    Fact("shipping.international", ("18 countries",),
         ("We ship to 18 countries, listed at checkout.",
          "Brightcart delivers to 18 countries; the list is shown at checkout.",
          "Yes, we ship internationally to 18 countries."),
         ("Do you ship internationally?", "Which countries do you ship to?", "Can you deliver abroad?",
          "Do you ship outside the US?", "How many countries do you deliver to?",
          "Is international shipping available?", "Can I order from Europe?"),
         ("I live overseas. Will you send parcels to other nations, and how many?",)),
    Fact("warranty.electronics", ("3 years",),
         ("Electronics come with a Brightcart warranty of 3 years.",
          "All electronics are covered by our warranty for 3 years.",
          "Our electronics warranty lasts 3 years from purchase."),
         ("What warranty do you offer?", "How long is the warranty on electronics?",
          "Is my gadget under warranty?", "How long are electronics covered?",
          "What does your warranty cover and for how long?", "Do electronics have a guarantee?",
          "How many years of warranty do I get?", "What's the warranty period?"),
         ("My headphones broke after a year. For how long does your guarantee protect devices?",
          "What is the length of coverage if an electronic item fails?")),
    Fact("payment.methods", ("SplitPay",),
         ("We accept credit and debit cards, PayPal, and SplitPay, which splits a purchase into 4 payments.",
          "You can pay by card, PayPal or SplitPay (4 interest-free payments).",
          "Cards, PayPal and SplitPay are accepted; SplitPay spreads the cost over 4 payments."),
         ("What payment methods do you accept?", "How can I pay?", "Can I pay in installments?",
          "Do you take PayPal?", "Which payment options are available?", "Can I split my payment?",
          "Do you offer buy now pay later?", "What ways can I pay for my order?"),
         ("Is there a way to spread the cost of a purchase over several months?",
          "Which options do I have at checkout to settle the bill?")),
    Fact("support.hours", ("8am to 8pm",),
         ("Our support team is available 8am to 8pm Eastern, Monday to Saturday.",
          "Support is open 8am to 8pm Eastern time, Monday through Saturday.",
          "You can reach us 8am to 8pm Eastern, six days a week (closed Sundays)."),
         ("What are your support hours?", "When is customer service open?", "When can I contact support?",
          "Are you open on weekends?", "What time does support close?", "When can I talk to an agent?",
          "What hours is your help desk available?"),
         ("At what times of day can I reach a human at Brightcart?",)),
    Fact("membership.plus", ("$49",),
         ("Brightcart Plus costs $49 a year and includes free express shipping.",
          "Membership in Brightcart Plus is $49 per year, with free express shipping on every order.",
          "Brightcart Plus is $49 a year; members get free express shipping."),
         ("What is Brightcart Plus?", "How much is the Brightcart Plus membership?",
          "Do you have a membership program?", "Is Brightcart Plus worth it?",
          "What does Brightcart Plus cost per year?", "What do members get?",
          "How much is the yearly membership?"),
         ("Tell me the annual fee for your Plus subscription.",)),
    Fact("orders.cancel", ("2 hours",),
         ("You can cancel an order within 2 hours of placing it, under My Orders.",
          "Orders can be cancelled for 2 hours after checkout; after that, please return the item instead.",
          "Cancellation is possible within 2 hours of ordering."),
         ("Can I cancel my order?", "How do I cancel an order?", "Is it too late to cancel my order?",
          "How long do I have to cancel?", "I ordered by mistake, can I cancel it?",
          "What is the cancellation window?", "Can I still cancel an order I placed this morning?",
          "Until when can an order be cancelled?"),
         ("I just hit buy and regret it. How much time do I have to undo the purchase?",
          "Is there a deadline for calling off an order?")),
    Fact("orders.damaged", ("Damage Report",),
         ("Sorry about that! Send a photo through the Damage Report form under My Orders and we will ship a "
          "replacement.",
          "Please file a Damage Report with a photo under My Orders; we send a free replacement.",
          "Use the Damage Report form with a photo, and a replacement is on its way."),
         ("My item arrived broken, what should I do?", "The package was damaged. Can you help?",
          "What do I do if my order is damaged?", "My kettle came with a crack in it.",
          "The product arrived smashed.", "How do I report a damaged item?",
          "Something in my order was broken on arrival."),
         ("The box showed up crushed and the lamp inside is in pieces. What now?",
          "How do I tell you about goods that were destroyed in transit?")),
    Fact("orders.tracking", ("My Orders",),
         ("Open My Orders and click Track package to see where your parcel is.",
          "You can track your parcel under My Orders, then Track package.",
          "Go to My Orders in your account and choose Track package."),
         ("How can I track my order?", "Where is my package?", "How do I track my parcel?",
          "Can I see my shipment status?", "Where can I find my tracking information?",
          "Is there a tracking link for my order?", "How do I check where my delivery is?"),
         ("I want to follow my shipment's journey. Where in the site do I look?",)),
    Fact("account.password_reset", ("30 minutes",),
         ("Click Forgot password on the sign-in page; the reset link is valid for 30 minutes.",
          "Use Forgot password to get a reset link, which expires after 30 minutes.",
          "Request a reset link with Forgot password; it works for 30 minutes."),
         ("I forgot my password.", "How do I reset my password?", "I can't log in to my account.",
          "My password reset link doesn't work.", "How long is the password reset link valid?",
          "How do I change my password?", "I'm locked out of my account."),
         ("The sign-in keeps rejecting me and I don't remember my credentials. How long does a recovery "
          "e-mail stay usable?",)),
    Fact("discounts.student", ("15%",),
         ("Students get 15% off with a verified student ID.",
          "We offer a 15% student discount once you verify your student ID.",
          "Verified students save 15% on every order."),
         ("Do you have a student discount?", "Is there a discount for students?",
          "I'm a student, can I get a discount?", "How much is the student discount?",
          "Do college students get money off?", "What discount do students get?"),
         ("I'm enrolled at university. Is there a reduced price for me?",)),
    Fact("discounts.first_order", ("HELLO10",),
         ("Use code HELLO10 for 10% off your first order.",
          "New customers get 10% off their first order with the code HELLO10.",
          "Enter HELLO10 at checkout to save 10% on your first purchase."),
         ("Do you have a discount code?", "Is there a coupon for new customers?",
          "Any discount on my first order?", "Do you have a promo code?",
          "I'm new here, is there a welcome offer?", "What code gives me money off my first purchase?"),
         ("This is my very first time shopping with you. Got a voucher I can type in?",)),
    Fact("gift_cards.validity", ("5 years",),
         ("Brightcart gift cards are valid for 5 years from the date of purchase.",
          "Our gift cards stay valid for 5 years.",
          "A gift card can be used for 5 years after it is bought."),
         ("Do gift cards expire?", "How long is a gift card valid?", "When does my gift card expire?",
          "Can I still use an old gift card?", "What is the expiry date on gift cards?",
          "How long can I use a gift card?"),
         ("My aunt gave me a Brightcart voucher card. How long before it runs out?",)),
    Fact("company.warehouse", ("Dayton",),
         ("All orders ship from our warehouse in Dayton, Ohio.",
          "We ship everything from our Dayton, Ohio warehouse.",
          "Your parcel leaves from our warehouse in Dayton, Ohio."),
         ("Where do you ship from?", "Where is your warehouse?", "Where are orders sent from?",
          "Where is Brightcart located?", "Which city do parcels come from?",
          "Where is your distribution center?"),
         ("In what town is the building that sends out your parcels?",)),
)

# More training phrasings per fact, in everyday words; none repeats a held-out question.
PARAPHRASES: dict[str, tuple[str, ...]] = {
    "returns.window": ("I bought shoes that don't fit. Can I send them back?", "How late can I return a purchase?",
                       "Do you accept returns after a few weeks?", "What's the maximum time for sending an item back?",
                       "I received my order a month ago and don't like it. Is a return still possible?",
                       "How much time do customers have to return products?"),
    "returns.label_fee": ("Is there a charge for sending a return?", "Do returns cost anything?",
                          "How much do you take off my refund for the return label?",
                          "Are returns free of charge?", "What do I pay to mail an item back to you?"),
    "refunds.time": ("How quickly do I get reimbursed?", "When is my money returned after you get the item?",
                     "How long before the refund hits my bank?", "How many days does a refund usually take?",
                     "You got my return. When do I see the money?"),
    "shipping.standard_cost": ("What's the delivery charge for a regular order?", "How much does normal shipping cost?",
                               "What do you charge to send an order to me?", "What is the standard shipping rate?",
                               "How much will I pay for delivery on a small order?"),
    "shipping.free_threshold": ("How much do I have to order for shipping to be free?", "Is delivery free over a certain amount?",
                                "Do I get free shipping if I spend more?", "What's the order value for free delivery?",
                                "Can I avoid paying for shipping?"),
    "shipping.standard_time": ("How many days until a standard order shows up?", "How long is normal delivery?",
                               "When can I expect my parcel with regular shipping?", "How long will standard shipping take to reach me?",
                               "What's the delivery window for standard orders?"),
    "shipping.express": ("How much to get my order the next day?", "What's the cost of fast delivery?",
                         "Can I pay extra for quicker shipping?", "Do you offer next-day delivery, and at what price?",
                         "How much is the express option?"),
    "shipping.international": ("Do you deliver to other countries?", "Can I get an order shipped abroad?",
                               "Do you send orders overseas?", "How many countries can you ship to?",
                               "Is shipping available outside the country?"),
    "warranty.electronics": ("How long is the guarantee on devices?", "My laptop stopped working. Is it still covered?",
                             "What coverage do electronics have?", "How long does your electronics guarantee last?",
                             "Are gadgets covered if they break?"),
    "payment.methods": ("Can I pay with PayPal or in parts?", "What are my options for paying?",
                        "Do you offer payment plans?", "Can I pay for an order over time?",
                        "Which cards and services can I use to pay?"),
    "support.hours": ("When is your team available?", "Can I call support on a Sunday?", "What time does customer service open?",
                      "During which hours can I chat with someone?", "Is support open in the evening?"),
    "membership.plus": ("What does the Plus membership cost?", "How much is Brightcart Plus a year?",
                        "Is there a yearly subscription with free express shipping?", "What's the price of your membership?"),
    "orders.cancel": ("Can I still stop my order?", "How soon do I need to cancel an order?",
                      "I placed an order by accident. Is there time to cancel?", "What's the time limit to cancel a purchase?",
                      "Can an order be cancelled after checkout?"),
    "orders.damaged": ("My package arrived with a broken item inside.", "The glass in my order was shattered.",
                       "What happens if something arrives damaged?", "An item I got is damaged. How do I get a replacement?",
                       "My order came broken. What should I do?"),
    "orders.tracking": ("Where can I see my delivery status?", "How do I find out where my order is?",
                        "Can I track my shipment online?", "Where do I check my package location?"),
    "account.password_reset": ("How long does the password reset link work?", "I need a new password.",
                               "My reset e-mail link expired. How long is it valid?", "I can't remember my login password.",
                               "How do I get back into my account?"),
    "discounts.student": ("Do students get a discount?", "Is there money off for university students?",
                          "How much do students save?", "Can I get a student price?"),
    "discounts.first_order": ("Is there a code for new customers?", "Do first-time buyers get a discount?",
                              "What promo code can I use on my first order?", "Any welcome discount for new shoppers?"),
    "gift_cards.validity": ("How long are gift cards good for?", "Does a Brightcart gift card run out?",
                            "Until when can I spend a gift card?", "Is there an expiry on gift vouchers?"),
    "company.warehouse": ("Where are your parcels shipped from?", "Which city is your warehouse in?",
                          "Where does my order come from?", "Where is your shipping center located?"),
}
PRICE_PARAPHRASES: tuple[str, ...] = ("How expensive is the {name}?", "What's the {name} priced at?", "Cost of the {name}?")
SPEC_PARAPHRASES: dict[str, tuple[str, ...]] = {
    "Aero kettle": ("What's the size of the Aero kettle in liters?", "How much does the Aero kettle fit?"),
    "Lumen desk lamp": ("How many light levels does the Lumen desk lamp have?", "Can the Lumen desk lamp get brighter or dimmer?"),
    "Drift earbuds": ("How long does the battery of the Drift earbuds last?", "How many hours do the Drift earbuds play?"),
    "Tempo smart scale": ("How many users does the Tempo smart scale support?", "Can several people use the Tempo smart scale?"),
    "Cascade blender": ("What is the motor power of the Cascade blender?", "How many watts does the Cascade blender have?"),
    "Orbit backpack": ("How large a laptop fits in the Orbit backpack?", "Which laptop sizes fit the Orbit backpack?"),
    "Harbor coffee grinder": ("How many grind levels does the Harbor coffee grinder have?", "How adjustable is the Harbor coffee grinder?"),
    "Pebble power bank": ("How much capacity does the Pebble power bank have?", "How many mAh does the Pebble power bank store?"),
}


@dataclass(frozen=True)
class Product:
    name: str
    price: str
    spec_fact: str
    spec_answers: tuple[str, ...]
    spec_questions: tuple[str, ...]
    spec_heldout: str


PRODUCTS: tuple[Product, ...] = (
    Product("Aero kettle", "$39", "1.7 liters",
            ("The Aero kettle holds 1.7 liters.", "Its capacity is 1.7 liters."),
            ("How much water does the Aero kettle hold?", "What is the capacity of the Aero kettle?",
             "How big is the Aero kettle?", "How many liters is the Aero kettle?",
             "Is the Aero kettle large enough for a family?"),
            "What volume can I boil at once in the Aero kettle?"),
    Product("Lumen desk lamp", "$54", "5 brightness levels",
            ("The Lumen desk lamp has 5 brightness levels.", "You can choose between 5 brightness levels."),
            ("Is the Lumen desk lamp dimmable?", "How many brightness settings does the Lumen desk lamp have?",
             "Can I adjust the brightness of the Lumen desk lamp?", "Does the Lumen desk lamp dim?",
             "What light settings does the Lumen desk lamp offer?"),
            "Can the Lumen desk lamp be made softer or stronger, and in how many steps?"),
    Product("Drift earbuds", "$79", "30 hours",
            ("The Drift earbuds last 30 hours with the charging case.",
             "Battery life is 30 hours including the case."),
            ("What is the battery life of the Drift earbuds?", "How long do the Drift earbuds last?",
             "How many hours of playback do the Drift earbuds have?", "Do the Drift earbuds have good battery?",
             "How long can I use the Drift earbuds before charging?"),
            "On a long flight, how much listening time will the Drift earbuds give me?"),
    Product("Tempo smart scale", "$45", "8 user profiles",
            ("The Tempo smart scale supports 8 user profiles.", "Up to 8 user profiles can share it."),
            ("How many people can use the Tempo smart scale?", "Does the Tempo smart scale support multiple users?",
             "How many profiles does the Tempo smart scale have?", "Can my family share the Tempo smart scale?",
             "Is the Tempo smart scale multi-user?"),
            "My household has several members. How many of us can the Tempo smart scale track?"),
    Product("Cascade blender", "$129", "1200-watt",
            ("The Cascade blender has a 1200-watt motor.", "It runs on a powerful 1200-watt motor."),
            ("How powerful is the Cascade blender?", "What wattage is the Cascade blender?",
             "How strong is the Cascade blender motor?", "Can the Cascade blender crush ice?",
             "What motor does the Cascade blender have?"),
            "Tell me about the power rating of the Cascade blender."),
    Product("Orbit backpack", "$68", "16 inches",
            ("The Orbit backpack fits laptops up to 16 inches.", "Laptops up to 16 inches fit in it."),
            ("Will my laptop fit in the Orbit backpack?", "What size laptop fits the Orbit backpack?",
             "Does the Orbit backpack have a laptop sleeve?", "How big a laptop can the Orbit backpack hold?",
             "Can I carry a large laptop in the Orbit backpack?"),
            "What's the largest notebook computer the Orbit backpack can take?"),
    Product("Harbor coffee grinder", "$89", "15 grind settings",
            ("The Harbor coffee grinder has 15 grind settings.", "It offers 15 grind settings, fine to coarse."),
            ("How many grind settings does the Harbor coffee grinder have?",
             "Can I adjust the grind on the Harbor coffee grinder?", "Is the Harbor coffee grinder adjustable?",
             "Does the Harbor coffee grinder do espresso and French press?",
             "What grind options does the Harbor coffee grinder offer?"),
            "How fine or coarse can the Harbor coffee grinder go, in how many steps?"),
    Product("Pebble power bank", "$29", "10,000 mAh",
            ("The Pebble power bank has a capacity of 10,000 mAh.", "It stores 10,000 mAh."),
            ("What is the capacity of the Pebble power bank?", "How much charge does the Pebble power bank hold?",
             "How many mAh is the Pebble power bank?", "How big is the Pebble power bank battery?",
             "Can the Pebble power bank charge my phone fully?"),
            "How much energy is stored in the Pebble power bank?"),
)

PRICE_ANSWERS = ("The {name} costs {price}.", "The {name} is {price}.", "It's {price} for the {name}.")
PRICE_QUESTIONS = (
    "How much is the {name}?", "What does the {name} cost?", "What's the price of the {name}?",
    "How much do you charge for the {name}?", "I'm thinking of buying the {name}. How much is it?",
    "Can you tell me what the {name} costs?", "Price of the {name}, please?",
)
PRICE_HELDOUT = ("What would I pay for a {name}?", "Is the {name} expensive? What's it going for?")


def product_facts() -> tuple[Fact, ...]:
    """Two facts per product: its price and one specification."""
    facts = []
    for i, p in enumerate(PRODUCTS):
        slug = p.name.lower().replace(" ", "_")
        facts.append(Fact(
            f"product.{slug}.price", (p.price,),
            tuple(a.format(name=p.name, price=p.price) for a in PRICE_ANSWERS),
            tuple(q.format(name=p.name) for q in PRICE_QUESTIONS),
            # One held-out price question per product, alternating between the two new phrasings.
            (PRICE_HELDOUT[i % len(PRICE_HELDOUT)].format(name=p.name),),
            tuple(q.format(name=p.name) for q in PRICE_PARAPHRASES),
        ))
        facts.append(Fact(f"product.{slug}.spec", (p.spec_fact,), p.spec_answers, p.spec_questions,
                          (p.spec_heldout,), SPEC_PARAPHRASES[p.name]))
    return tuple(facts)


def all_facts() -> tuple[Fact, ...]:
    policies = tuple(replace(f, paraphrases=PARAPHRASES[f.key]) for f in POLICIES)
    return policies + product_facts()
